/* Entry points of the two sides, called by the SPANK hooks in hpccont_spank.c. */
#ifndef HPCCONT_SPANK_SIDES_H
#define HPCCONT_SPANK_SIDES_H

#include <slurm/spank.h>

int client_init_post_opt(spank_t sp);    /* srun_side.c: srun, sbatch, salloc */
int stepd_init_post_opt(spank_t sp);     /* stepd_side.c: once per node per step (accounting) */
int stepd_user_init(spank_t sp);         /* stepd_side.c: once per node per step (the container) */
int stepd_task_init(spank_t sp);         /* stepd_side.c: each task, as the user; execs */
int stepd_task_post_fork(spank_t sp);    /* stepd_side.c: in slurmstepd after each fork (cgroups) */
int stepd_exit(spank_t sp);              /* stepd_side.c: after the tasks: the step's container */

#endif
