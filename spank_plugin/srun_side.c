/*
 * Client side: srun (local context), sbatch and salloc (allocator context).
 *
 * Runs in the user's own process on the submit host, where relative image paths were typed.
 */
#include <limits.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

#include "options.h"
#include "sides.h"

int client_init_post_opt(spank_t sp)
{
	char cwd[PATH_MAX], **opts = NULL;
	int n;

	if (!hpccont_requested(sp)) {
		/* Options that only mean something with an image: say so, once, in the client. */
		n = hpccont_collect_options(sp, &opts);
		if (n > 0)
			fprintf(stderr, "hpccont: warning: --%.*s has no effect without --container\n",
				(int)strcspn(opts[0], "="), opts[0]);
		return 0;
	}
	/* An srun inside a batch job has the job's SLURM_SUBMIT_DIR, not the directory it was
	 * started from; tell the node where a relative image path was typed.  (Not delivered
	 * with --export=NONE: the Python side then falls back to the task's working directory.) */
	if (getcwd(cwd, sizeof(cwd)) != NULL)
		spank_setenv(sp, "HPCCONT_SLURM_CWD", cwd, 1);
	return 0;
}
