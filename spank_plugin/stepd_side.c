/*
 * slurmstepd side (remote context).
 *
 * stepd_user_init runs once per node per step in slurmstepd (the first hook where the options
 * are known there; slurmstepd has only set its effective uid to the user's): it lets
 * "hpccont slurm record", as root again, write the accounting line (image path and digest) to
 * a file only admins can write.  stepd_task_init runs in each forked task, already as the user, just before
 * Slurm would exec the task: we exec "hpccont slurm task" instead, which decides everything and
 * execs either the container or the original command.  The process keeps its PID, so it stays in
 * the step's cgroup, and scancel, --signal and the exit status work as for any task.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include "options.h"
#include "sides.h"

/* hpccont slurm MODE --step J.S --arg A... --opt O... [-- ARGV...] */
static char **build_argv(spank_t sp, const char *mode, int with_job_argv)
{
	uint32_t jobid = 0, stepid = 0;
	int job_argc = 0, nopts, i, n = 0;
	char **job_argv = NULL, **opts = NULL, **argv;
	static char step[64];

	if (spank_get_item(sp, S_JOB_ID, &jobid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &stepid) != ESPANK_SUCCESS)
		return NULL;
	if (with_job_argv &&
	    spank_get_item(sp, S_JOB_ARGV, &job_argc, &job_argv) != ESPANK_SUCCESS)
		return NULL;
	nopts = hpccont_collect_options(sp, &opts);
	if (nopts < 0)
		return NULL;
	argv = calloc(8 + 2 * hpccont_args.nargs + 2 * nopts + job_argc, sizeof(char *));
	if (argv == NULL)
		return NULL;
	snprintf(step, sizeof(step), "%u.%u", jobid, stepid);
	argv[n++] = hpccont_args.hpccont;
	argv[n++] = "slurm";
	argv[n++] = (char *)mode;
	argv[n++] = "--step";
	argv[n++] = step;
	for (i = 0; i < hpccont_args.nargs; i++) {
		argv[n++] = "--arg";
		argv[n++] = hpccont_args.args[i];
	}
	for (i = 0; i < nopts; i++) {
		argv[n++] = "--opt";
		argv[n++] = opts[i];
	}
	argv[n++] = "--";
	for (i = 0; i < job_argc; i++)
		argv[n++] = job_argv[i];
	argv[n] = NULL;
	return argv;
}

static char **job_env(spank_t sp)
{
	char **env = NULL;

	/* Plain environ here is slurmstepd's, not the job's. */
	if (spank_get_item(sp, S_JOB_ENV, &env) != ESPANK_SUCCESS)
		return NULL;
	return env;
}

int stepd_user_init(spank_t sp)
{
	char **argv, **env;
	pid_t pid;
	int status, devnull;

	if (!hpccont_requested(sp))
		return 0;
	argv = build_argv(sp, "record", 0);
	env = job_env(sp);
	if (argv == NULL || env == NULL) {
		slurm_error("hpccont: cannot collect the step's options for accounting");
		return 0;
	}
	pid = fork();
	if (pid < 0) {
		slurm_error("hpccont: fork: %s", strerror(errno));
		return 0;
	}
	if (pid == 0) {
		/* slurmstepd runs this hook with only its effective ids dropped to the user's; the
		 * real uid is still 0, so root comes back (uid first: it restores the capabilities). */
		if (setresuid(0, 0, 0) != 0 || setresgid(0, 0, 0) != 0 || setgroups(0, NULL) != 0)
			_exit(126);
		/* The task reports bad options to the user, once; this copy stays quiet. */
		devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
		}
		execve(hpccont_args.hpccont, argv, env);
		_exit(127);
	}
	/* Accounting never fails a step: the status goes to slurmd's log only (slurm_error would
	 * also be shown by srun). */
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		slurm_info("hpccont: '%s slurm record' failed (status %d)", hpccont_args.hpccont, status);
	return 0;
}

int stepd_task_init(spank_t sp)
{
	char **argv, **env;

	if (!hpccont_requested(sp))
		return 0;
	argv = build_argv(sp, "task", 1);
	env = job_env(sp);
	if (argv == NULL || env == NULL) {
		fprintf(stderr, "hpccont: cannot read the task's command and environment from Slurm\n");
		_exit(127);
	}
	execve(hpccont_args.hpccont, argv, env);
	/* Returning would run the task outside the container: never do that. */
	fprintf(stderr, "hpccont: cannot execute %s: %s\n", hpccont_args.hpccont, strerror(errno));
	_exit(127);
}
