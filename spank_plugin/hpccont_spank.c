/*
 * hpccont SPANK plugin: the hooks Slurm calls, dispatched to the side of the job they run on.
 *
 * plugstack.conf:  required /usr/lib/hpccont/hpccont_spank.so hpccont=/usr/bin/hpccont \
 *                  image_dir=/shared/images wrap_batch=yes \
 *                  accounting=/var/log/hpccont/slurm-steps.jsonl
 * Every argument is passed on to "hpccont slurm", which owns their meaning.
 */
#include "options.h"
#include "sides.h"

/* Only the hooks Slurm looks up are exported. */
#pragma GCC visibility push(default)

SPANK_PLUGIN(hpccont, 1);

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	if (hpccont_parse_args(ac, av) != 0)
		return -1;
	switch (spank_context()) {
	case S_CTX_LOCAL:
	case S_CTX_ALLOCATOR:
	case S_CTX_REMOTE:
		return hpccont_register_options(sp);
	default:
		return 0;   /* slurmd, prolog/epilog: nothing to do */
	}
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	(void)ac; (void)av;
	switch (spank_context()) {
	case S_CTX_LOCAL:
	case S_CTX_ALLOCATOR:
		return client_init_post_opt(sp);
	case S_CTX_REMOTE:
		return stepd_init_post_opt(sp);
	default:
		return 0;
	}
}

int slurm_spank_user_init(spank_t sp, int ac, char **av)
{
	(void)ac; (void)av;
	if (!spank_remote(sp))
		return 0;
	return stepd_user_init(sp);
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	(void)ac; (void)av;
	if (!spank_remote(sp))
		return 0;
	return stepd_task_init(sp);
}

int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
	(void)ac; (void)av;
	if (!spank_remote(sp))
		return 0;
	return stepd_task_post_fork(sp);
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	(void)ac; (void)av;
	if (!spank_remote(sp))
		return 0;
	return stepd_exit(sp);
}

#pragma GCC visibility pop
