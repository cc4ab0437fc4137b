/*
 * Client side: srun (local context), sbatch and salloc (allocator context).
 *
 * Runs in the user's own process on the submit host, where relative image paths were typed.
 */
#include <limits.h>
#include <unistd.h>

#include "options.h"
#include "sides.h"

int client_init_post_opt(spank_t sp)
{
	char cwd[PATH_MAX];

	/* (A container option given without an image is reported by cli_filter.lua.) */
	if (!hpccont_requested(sp))
		return 0;
	/* An srun inside a batch job has the job's SLURM_SUBMIT_DIR, not the directory it was
	 * started from; tell the node where a relative image path was typed.  (Not delivered
	 * with --export=NONE: the Python side then falls back to the task's working directory.) */
	if (getcwd(cwd, sizeof(cwd)) != NULL)
		spank_setenv(sp, "HPCCONT_SLURM_CWD", cwd, 1);
	return 0;
}
