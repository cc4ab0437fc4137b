/*
 * The container options every context registers, and their values as collected.
 *
 * Shared by the srun/sbatch/salloc side and the slurmstepd side: Slurm forwards an option
 * given on the client to slurmstepd only if both sides registered it under the same name.
 */
#ifndef HPCCONT_SPANK_OPTIONS_H
#define HPCCONT_SPANK_OPTIONS_H

#include <slurm/spank.h>

/* The image option.  Slurm owns --container (OCI bundles) and Pyxis owns --container-image,
 * so the plugin's own name is --hpccont-image; the cli_filter maps --container=IMG to it. */
#define HPCCONT_IMAGE_OPTION "hpccont-image"

#define HPCCONT_MAX_ARGS 16

struct hpccont_args {
	char *hpccont;                       /* hpccont executable (plugstack "hpccont=") */
	int prepare_timeout;                 /* seconds (plugstack "prepare_timeout=") */
	int nargs;
	char *args[HPCCONT_MAX_ARGS];        /* every plugstack argument, for the Python side */
};

extern struct hpccont_args hpccont_args;

int hpccont_register_options(spank_t sp);
int hpccont_parse_args(int ac, char **av);

/* "name=value" (or "name" for flags) for each option given to this job or step.
 * Returns the count; *out is a malloc'd array of malloc'd strings (freed by the caller or exec). */
int hpccont_collect_options(spank_t sp, char ***out);

/* Non-zero when anything asks for a container: an option, or HPCCONT_CONTAINER in the job
 * environment.  Nothing asked means no Python process is started for the task. */
int hpccont_requested(spank_t sp);

#endif
