/*
 * Option table shared by every context.  The C side only records what the user typed;
 * hpccont (Python) decides what it means.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

struct hpccont_args hpccont_args = { .hpccont = "/usr/bin/hpccont", .prepare_timeout = 300 };

static int option_seen(int val, const char *optarg, int remote)
{
	(void)val; (void)optarg; (void)remote;
	return 0;   /* values are read back with spank_option_getopt where they are needed */
}

static struct spank_option options[] = {
	{ HPCCONT_IMAGE_OPTION, "IMAGE",
	  "[hpccont] run the tasks in IMAGE (SIF, squashfs, sandbox dir, or a name in the site "
	  "image directory; 'none' for no container). --container=IMAGE maps here.", 1, 0, option_seen },
	{ "container-bind", "SRC[:DST[:ro]],...", "[hpccont] bind host paths into the container",
	  1, 0, option_seen },
	{ "container-env", "NAME,...", "[hpccont] pass these variables (also with --container-cleanenv)",
	  1, 0, option_seen },
	{ "container-workdir", "PATH", "[hpccont] working directory inside the container",
	  1, 0, option_seen },
	{ "container-writable-tmpfs", NULL, "[hpccont] writable tmpfs overlay on the image",
	  0, 0, option_seen },
	{ "container-nv", NULL, "[hpccont] NVIDIA GPU support", 0, 0, option_seen },
	{ "container-mpi", "hybrid|bind", "[hpccont] MPI mode", 1, 0, option_seen },
	{ "container-cleanenv", NULL, "[hpccont] start from a clean environment", 0, 0, option_seen },
	{ "container-mount-home", NULL, "[hpccont] mount the home directory (default)",
	  0, 0, option_seen },
	{ "no-container-mount-home", NULL, "[hpccont] do not mount the home directory",
	  0, 0, option_seen },
	SPANK_OPTIONS_TABLE_END
};

int hpccont_register_options(spank_t sp)
{
	struct spank_option *o;

	/* A static spank_options[] table is seen by srun only; sbatch and salloc need
	 * spank_option_register from slurm_spank_init. */
	for (o = options; o->name; o++) {
		if (spank_option_register(sp, o) != ESPANK_SUCCESS) {
			slurm_error("hpccont: cannot register --%s", o->name);
			return -1;
		}
	}
	return 0;
}

int hpccont_parse_args(int ac, char **av)
{
	int i;

	hpccont_args.nargs = 0;
	for (i = 0; i < ac; i++) {
		if (strncmp(av[i], "hpccont=", 8) == 0)
			hpccont_args.hpccont = av[i] + 8;
		if (strncmp(av[i], "prepare_timeout=", 16) == 0 && atoi(av[i] + 16) > 0)
			hpccont_args.prepare_timeout = atoi(av[i] + 16);
		if (hpccont_args.nargs == HPCCONT_MAX_ARGS) {
			slurm_error("hpccont: too many plugstack arguments");
			return -1;
		}
		hpccont_args.args[hpccont_args.nargs++] = av[i];
	}
	return 0;
}

int hpccont_collect_options(spank_t sp, char ***out)
{
	struct spank_option *o;
	char **list = calloc(sizeof(options) / sizeof(options[0]), sizeof(char *));
	int n = 0;

	if (list == NULL)
		return -1;
	for (o = options; o->name; o++) {
		char *optarg = NULL;

		if (spank_option_getopt(sp, o, &optarg) != ESPANK_SUCCESS)
			continue;
		if (o->has_arg) {
			size_t len = strlen(o->name) + strlen(optarg ? optarg : "") + 2;

			list[n] = malloc(len);
			if (list[n] == NULL)
				return -1;
			snprintf(list[n], len, "%s=%s", o->name, optarg ? optarg : "");
		} else {
			list[n] = strdup(o->name);
			if (list[n] == NULL)
				return -1;
		}
		n++;
	}
	*out = list;
	return n;
}

int hpccont_requested(spank_t sp)
{
	char *optarg = NULL;
	char buf[8];
	spank_err_t rc;

	/* options[0] is the image; the other options mean nothing without one. */
	if (spank_option_getopt(sp, &options[0], &optarg) == ESPANK_SUCCESS)
		return 1;
	/* ESPANK_NOSPACE: set, with a value longer than buf. */
	rc = spank_getenv(sp, "HPCCONT_CONTAINER", buf, sizeof(buf));
	return rc == ESPANK_SUCCESS || rc == ESPANK_NOSPACE;
}
