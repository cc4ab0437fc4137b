/*
 * slurmstepd side (remote context).
 *
 * stepd_init_post_opt runs once per node per step in slurmstepd (the first hook where the
 * options are known there): it starts "hpccont slurm account", as root, which writes the
 * accounting line (image path and digest) to a file only admins can write.  stepd_user_init
 * (slurmstepd has only set its effective uid to the user's by then) waits for it before the
 * tasks start.  stepd_task_init runs in each forked task, already as the user, just before
 * Slurm would exec the task: we exec "hpccont slurm task" instead, which decides everything and
 * execs either the container or the original command.  The process keeps its PID, so it stays in
 * the step's cgroup, and scancel, --signal and the exit status work as for any task.
 *
 * Steps with several tasks on the node: stepd_user_init also runs "hpccont slurm prepare" (as
 * the user), which starts the step's container once and prints a recipe; slurmstepd keeps it in
 * memory (tasks are forked from it after this hook, so each task has a copy) and each task
 * enters that container in C (recipe.c) instead of starting Python.  Without a recipe the task
 * takes the "hpccont slurm task" path, which also reports any error.  stepd_exit (after the
 * tasks) kills the container's keeper and removes its state files, again as the user.
 *
 * stepd_task_post_fork (once, for the first task, in slurmstepd): the keeper and its FUSE
 * server were started before any task existed, from slurmstepd, so they sit in slurmstepd's
 * cgroups.  They are moved into the first task's cgroups (all but the freezer, see adopt()),
 * where the step's limits and accounting cover them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <poll.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "options.h"
#include "recipe.h"
#include "sides.h"

/* hpccont slurm MODE --step J.S --arg A... --opt O... [EXTRA...] -- [ARGV...]
 * EXTRA: further "--flag value" pairs (the accounting step's job values and identity). */
static char **build_argv(spank_t sp, const char *mode, int with_job_argv, char **extra, int nextra)
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
	argv = calloc(8 + 2 * hpccont_args.nargs + 2 * nopts + nextra + job_argc, sizeof(char *));
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
	for (i = 0; i < nextra; i++)
		argv[n++] = extra[i];
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

/* The step's container, from prepare; keeper == 0 when there is none. */
static struct recipe step_recipe;

/* Become the job's user entirely (slurmstepd hooks run with only the effective ids dropped;
 * the real uid is still 0, which lets root come back first: uid first, it restores the
 * capabilities that setgroups and setresgid need). */
static int become_user(spank_t sp)
{
	uid_t uid;
	gid_t gid, *gids = NULL;
	int ngids = 0;

	if (spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_SUPPLEMENTARY_GIDS, &gids, &ngids) != ESPANK_SUCCESS)
		return -1;
	if (setresuid(0, 0, 0) != 0 || setgroups(ngids, gids) != 0 ||
	    setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
		return -1;
	return 0;
}

static void wait_child(pid_t pid, int *status)
{
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
}

/*
 * The privilege boundary.  "hpccont slurm account" is the only program this plugin runs as root,
 * and nothing of the job's reaches it through the dynamic loader, the interpreter or a PATH
 * lookup:
 *  - its environment is root_env below, built here, never the job's (LD_PRELOAD, LD_AUDIT,
 *    LD_LIBRARY_PATH, PYTHONPATH and PATH from the job would otherwise act with uid 0: the real
 *    uid is already 0, so the loader's secure-execution mode does not switch on);
 *  - the program is the plugstack's absolute "hpccont=", which must be owned by root and not
 *    writable by anyone else, nor its directory (install-plugin writes an isolated launcher:
 *    an absolute interpreter with -I);
 *  - the job's values it needs arrive as arguments ("--jobenv NAME=VALUE"; the Python side
 *    keeps only the names it uses), and the job's identity from Slurm itself ("--user");
 *  - it opens the image as the user (hpccont/privsep.py), never with root's credentials.
 * (Keep root_env in step with ROOT_ENV in hpccont/privsep.py; the plugstack's slurm_conf= tells
 * account where a non-default slurm.conf is.)
 */
static void beside_launcher(const char *name, char *out, size_t size);

static char *root_env[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "LC_ALL=C", NULL };

/* Root runs it: a file anyone but root could change would be a way in. */
static int trusted_by_root(const char *path)
{
	char dir[4096], *slash;
	struct stat st;

	if (path[0] != '/' || stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 ||
	    (st.st_mode & (S_IWGRP | S_IWOTH)))
		return 0;
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	*(slash == dir ? slash + 1 : slash) = '\0';
	return stat(dir, &st) == 0 && st.st_uid == 0 && !(st.st_mode & (S_IWGRP | S_IWOTH));
}

/* Descriptors slurmstepd holds must not reach a child that runs something else. */
static void close_inherited(void)
{
	if (syscall(SYS_close_range, 3, ~0U, 0) != 0) {
		int fd;

		for (fd = 3; fd < 1024; fd++)
			close(fd);
	}
}

/* "--user UID:GID:G1,G2,...", "--node N" (this node's index in the step: its first sets the
 * job's AdminComment) and "--jobenv NAME=VALUE" for each job variable. */
static char **account_extra(spank_t sp, char **env, int *count)
{
	static char user[4096], node[16];
	uint32_t nodeid = 0;
	uid_t uid;
	gid_t gid, *gids = NULL;
	int ngids = 0, nenv = 0, i, n = 0;
	size_t len;
	char **extra;

	if (spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_SUPPLEMENTARY_GIDS, &gids, &ngids) != ESPANK_SUCCESS)
		return NULL;
	len = snprintf(user, sizeof(user), "%u:%u:", (unsigned)uid, (unsigned)gid);
	for (i = 0; i < ngids && len < sizeof(user) - 16; i++)
		len += snprintf(user + len, sizeof(user) - len, "%s%u", i ? "," : "", (unsigned)gids[i]);
	while (env[nenv])
		nenv++;
	extra = calloc(4 + 2 * nenv, sizeof(char *));
	if (extra == NULL)
		return NULL;
	extra[n++] = "--user";
	extra[n++] = user;
	if (spank_get_item(sp, S_JOB_NODEID, &nodeid) == ESPANK_SUCCESS) {
		snprintf(node, sizeof(node), "%u", (unsigned)nodeid);
		extra[n++] = "--node";
		extra[n++] = node;
	}
	for (i = 0; i < nenv; i++) {
		extra[n++] = "--jobenv";
		extra[n++] = env[i];
	}
	*count = n;
	return extra;
}

/* Start "hpccont slurm account" as root; returns its PID (0 when it could not start).  It runs
 * while prepare builds the container: the step waits for the longer of the two, not the sum.
 * It is reaped before the tasks start, not at step exit: a child of slurmstepd still there (or
 * a zombie) when the tasks end is a process in the step's container, which proctrack then
 * waits for (measured: a one-task step 0.31 s with this wait, 0.43 s when reaped at exit). */
static pid_t start_account(spank_t sp, char **env)
{
	int nextra = 0, devnull;
	char **extra = account_extra(sp, env, &nextra);
	char **argv = extra ? build_argv(sp, "account", 0, extra, nextra) : NULL;
	char writer[4096];
	pid_t pid;

	if (argv == NULL) {
		slurm_error("hpccont: cannot collect the step's options for accounting");
		return 0;
	}
	if (!trusted_by_root(hpccont_args.hpccont)) {
		slurm_info("hpccont: no accounting entry for the step: %s (or its directory) is not owned by "
			   "root or is writable by others", hpccont_args.hpccont);
		return 0;
	}
	/* launcher/account.c writes the entry from root's template, or runs the launcher */
	beside_launcher("hpccont-account", writer, sizeof(writer));
	if (writer[0] && !trusted_by_root(writer))
		writer[0] = '\0';
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
		close_inherited();
		if (writer[0])
			execve(writer, argv, root_env);
		execve(hpccont_args.hpccont, argv, root_env);
		_exit(127);
	}
	return pid;
}

/* Accounting never fails a step: the status goes to slurmd's log only (slurm_error would also
 * be shown by srun). */
static void finish_account(pid_t pid)
{
	int status;

	if (pid <= 0)
		return;
	wait_child(pid, &status);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		slurm_info("hpccont: '%s slurm account' failed (status %d)", hpccont_args.hpccont, status);
}

/* What prepare may print, and for how long: a recipe is a few KiB; a helper that floods the
 * pipe or never exits must not hold slurmstepd (and the step) forever. */
#define RECIPE_MAX (4 << 20)

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Read the child's output until EOF, at most RECIPE_MAX bytes and timeout_s seconds.
 * Returns the length, or -1 (too long), -2 (too slow), -3 (out of memory). */
static ssize_t read_bounded(int fd, char **out, int timeout_s)
{
	long deadline = now_ms() + 1000L * timeout_s;
	size_t len = 0, cap = 0;
	char *buf = NULL, *grown;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	ssize_t n;
	int left, rc;

	for (;;) {
		left = (int)(deadline - now_ms());
		if (left <= 0) {
			free(buf);
			return -2;
		}
		rc = poll(&pfd, 1, left);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc == 0) {
			free(buf);
			return -2;
		}
		if (len == cap) {
			if (cap >= RECIPE_MAX) {
				free(buf);
				return -1;
			}
			cap = cap ? 2 * cap : 4096;
			grown = realloc(buf, cap);
			if (grown == NULL) {
				free(buf);
				return -3;
			}
			buf = grown;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += n;
	}
	*out = buf;
	return (ssize_t)len;
}

/* A C program beside the plugin's launcher (install-plugin puts hpccont-step and
 * hpccont-account there), or "". */
static void beside_launcher(const char *name, char *out, size_t size)
{
	const char *slash = strrchr(hpccont_args.hpccont, '/');
	int n = slash ? (int)(slash - hpccont_args.hpccont) : 0;

	if (slash == NULL || (size_t)snprintf(out, size, "%.*s/%s", n, hpccont_args.hpccont,
					      name) >= size ||
	    access(out, X_OK) != 0)
		out[0] = '\0';
}

/* Run "hpccont slurm prepare" as the user and keep the recipe it prints.  A failure of its
 * own (bad options, no image...) leaves no recipe: the tasks then take the Python path, which
 * reports the error to the user.  A prepare that floods its output or hangs fails the step. */
static int prepare(spank_t sp, char **env)
{
	char **argv, builder[4096];
	char *buf = NULL;
	ssize_t len;
	uint32_t ntasks = 0;
	int fds[2], status, devnull;
	pid_t pid;

	if (spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &ntasks) != ESPANK_SUCCESS || ntasks < 1)
		return 0;
	beside_launcher("hpccont-step", builder, sizeof(builder));
	argv = build_argv(sp, "prepare", 1, NULL, 0);
	if (argv == NULL || pipe2(fds, O_CLOEXEC) != 0)
		return 0;
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return 0;
	}
	if (pid == 0) {
		devnull = open("/dev/null", O_RDWR);
		if (devnull < 0 || become_user(sp) != 0)
			_exit(126);
		dup2(devnull, 0);
		dup2(fds[1], 1);      /* dup2 clears close-on-exec on the copy */
		dup2(devnull, 2);
		close_inherited();
		/* The step builder beside the launcher (launcher/step.c) takes the same arguments
		 * and runs the launcher itself for a step it has no template for. */
		if (builder[0])
			execve(builder, argv, env);
		execve(hpccont_args.hpccont, argv, env);
		_exit(127);
	}
	close(fds[1]);
	/* EOF comes when prepare exits: the keeper it starts closes every inherited descriptor. */
	len = read_bounded(fds[0], &buf, hpccont_args.prepare_timeout);
	close(fds[0]);
	if (len < 0)
		kill(pid, SIGKILL);   /* it runs as the user: slurmstepd's effective uid may signal it */
	wait_child(pid, &status);
	if (len == -1 || len == -2) {
		slurm_error("hpccont: '%s slurm prepare' %s: the step is not started",
			    hpccont_args.hpccont, len == -1 ? "printed more than a recipe can be" :
			    "did not finish within prepare_timeout");
		return -1;
	}
	if (len > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
	    recipe_parse(&step_recipe, buf, len) == 0)
		return 0;
	if (len > 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		slurm_info("hpccont: '%s slurm prepare' gave no recipe (status %d): tasks start "
			   "their container themselves", hpccont_args.hpccont, status);
	free(buf);
	return 0;
}

/*
 * Cgroup moves without the grace period.  A write to cgroup.procs takes the kernel's
 * cgroup_threadgroup_rwsem for writing: a per-CPU rwsem, whose writer waits for an RCU grace
 * period (rcu_sync_enter, kernel/rcu/sync.c) unless another writer ran within the last one.
 * In a bare step slurmstepd moves its task into the step's cgroups right after its own set-up
 * moves and never waits; with a container, user_init runs for ~30 ms in between, and the
 * task's move then waited 11-14 ms (measured: strace of slurmstepd, and the hooks stamped).
 * So while user_init runs, a child moves itself into the cgroup it is already in (nothing
 * changes) every WARM_US: the first move pays the grace period beside the container's build,
 * and the task's move comes within one of the last.  Root's child: cgroup files are root's.
 */
#define WARM_US 2000
#define WARM_MAX 5000              /* moves at most (10 s): it never outlives a stuck hook */

static pid_t start_warmer(void)
{
	char line[512], path[640];
	pid_t pid = fork();
	FILE *f;
	int fd = -1, i;

	if (pid != 0)
		return pid > 0 ? pid : 0;
	close_inherited();
	if (setresuid(0, 0, 0) != 0 || (f = fopen("/proc/self/cgroup", "re")) == NULL)
		_exit(0);
	/* any hierarchy will do (the rwsem is one for all): the first, "ID:CONTROLLERS:PATH" */
	if (fgets(line, sizeof(line), f) != NULL) {
		char *ctrls = strchr(line, ':'), *cg = ctrls ? strchr(ctrls + 1, ':') : NULL;

		if (cg != NULL) {
			*cg++ = '\0';
			cg[strcspn(cg, "\n")] = '\0';
			ctrls++;
			if (strncmp(ctrls, "name=", 5) == 0)
				ctrls += 5;
			snprintf(path, sizeof(path), "/sys/fs/cgroup/%s%s%s/cgroup.procs", ctrls,
				 *ctrls ? "" : "unified", cg);
			fd = open(path, O_WRONLY | O_CLOEXEC);
			if (fd < 0 && !*ctrls) {
				snprintf(path, sizeof(path), "/sys/fs/cgroup%s/cgroup.procs", cg);
				fd = open(path, O_WRONLY | O_CLOEXEC);
			}
		}
	}
	fclose(f);
	snprintf(line, sizeof(line), "%d\n", (int)getpid());
	for (i = 0; fd >= 0 && i < WARM_MAX && write(fd, line, strlen(line)) > 0; i++)
		usleep(WARM_US);
	_exit(0);
}

static void stop_warmer(pid_t pid)
{
	int status;

	if (pid <= 0)
		return;
	kill(pid, SIGKILL);
	wait_child(pid, &status);
}

/* The accounting program, started in init_post_opt: slurmstepd still sets up the step (its
 * cgroups, the MPI plugin's server) for a few milliseconds before user_init, and with the
 * step's container built in C (launcher/step.c) the accounting program is the longer of the
 * two that user_init waits for. */
static pid_t accountant;

int stepd_init_post_opt(spank_t sp)
{
	char **env;

	if (!hpccont_requested(sp) || (env = job_env(sp)) == NULL)
		return 0;
	accountant = start_account(sp, env);
	return 0;
}

int stepd_user_init(spank_t sp)
{
	char **env;
	pid_t warmer;
	int rc;

	if (!hpccont_requested(sp))
		return 0;
	env = job_env(sp);
	if (env == NULL) {
		slurm_error("hpccont: cannot read the step's environment");
		return 0;
	}
	/* not started in init_post_opt (no environment there): now, beside prepare */
	if (accountant == 0)
		accountant = start_account(sp, env);
	warmer = start_warmer();
	rc = prepare(sp, env);
	finish_account(accountant);
	accountant = 0;
	stop_warmer(warmer);
	return rc;
}

static void enter_prepared(spank_t sp)
{
	char **argv = NULL, **env;
	int argc = 0;
	uid_t uid;

	if (step_recipe.keeper == 0)
		return;
	if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1 ||
	    spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS || (env = job_env(sp)) == NULL)
		return;
	/* A keeper killed or gone since prepare: the Python path starts a new container. */
	if (!recipe_keeper_alive(&step_recipe, uid))
		return;
	recipe_exec(&step_recipe, argv, env);
}

int stepd_task_init(spank_t sp)
{
	char **argv, **env;

	if (!hpccont_requested(sp))
		return 0;
	enter_prepared(sp);     /* returns only if the step's container cannot be entered */
	argv = build_argv(sp, "task", 1, NULL, 0);
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

/* Write each PID of the keeper and its children into every cgroup hierarchy the task is in.
 * Only processes of the job's user are moved: the recipe came from the user. */
static void adopt(pid_t task, uid_t uid)
{
	char path[512], line[512], children[4096], *ctrls, *cg, *tok, *save = NULL;
	pid_t pids[64];
	int n = 0, i, fd;
	ssize_t len;
	FILE *f;
	struct stat st;

	pids[n++] = step_recipe.keeper;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)step_recipe.keeper,
		 (int)step_recipe.keeper);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		len = read(fd, children, sizeof(children) - 1);
		close(fd);
		children[len > 0 ? len : 0] = '\0';
		for (tok = strtok_r(children, " \n", &save); tok && n < 64; tok = strtok_r(NULL, " \n", &save))
			pids[n++] = (pid_t)atoi(tok);
	}
	snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)task);
	f = fopen(path, "re");
	if (f == NULL)
		return;
	/* "ID:CONTROLLERS:PATH"; cgroup v1 hierarchies are mounted at /sys/fs/cgroup/CONTROLLERS
	 * (name=systemd at .../systemd), the v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup. */
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		ctrls = strchr(line, ':');
		cg = ctrls ? strchr(ctrls + 1, ':') : NULL;
		if (cg == NULL)
			continue;
		*cg++ = '\0';
		ctrls++;
		if (strncmp(ctrls, "name=", 5) == 0)
			ctrls += 5;
		/* Not the freezer: proctrack/cgroup waits for that hierarchy to empty at the end
		 * of the step, and these two are orphans whose zombies wait for PID 1 to reap
		 * them (slow on some nodes).  slurm_spank_exit kills them; if slurmstepd itself
		 * dies, the keeper notices (it watches slurmstepd) and leaves. */
		if (strcmp(ctrls, "freezer") == 0)
			continue;
		if (*ctrls)
			snprintf(path, sizeof(path), "/sys/fs/cgroup/%s%s/cgroup.procs", ctrls, cg);
		else if (stat("/sys/fs/cgroup/unified/cgroup.procs", &st) == 0)
			snprintf(path, sizeof(path), "/sys/fs/cgroup/unified%s/cgroup.procs", cg);
		else
			snprintf(path, sizeof(path), "/sys/fs/cgroup%s/cgroup.procs", cg);
		for (i = 0; i < n; i++) {
			snprintf(line, sizeof(line), "/proc/%d", (int)pids[i]);
			if (stat(line, &st) != 0 || st.st_uid != uid)
				continue;
			fd = open(path, O_WRONLY | O_CLOEXEC);
			if (fd < 0)
				break;
			len = snprintf(line, sizeof(line), "%d\n", (int)pids[i]);
			if (write(fd, line, len) < 0)
				slurm_info("hpccont: cannot move the container keeper into %s: %s", path,
					   strerror(errno));
			close(fd);
		}
	}
	fclose(f);
}

int stepd_task_post_fork(spank_t sp)
{
	pid_t task, pid;
	uid_t uid;
	int taskid = -1, status;

	if (step_recipe.keeper == 0 ||
	    spank_get_item(sp, S_TASK_ID, &taskid) != ESPANK_SUCCESS || taskid != 0 ||
	    spank_get_item(sp, S_TASK_PID, &task) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS)
		return 0;
	if (!recipe_keeper_alive(&step_recipe, uid))
		return 0;
	/* In a child that takes root back (the real uid is 0): cgroup files belong to root. */
	pid = fork();
	if (pid == 0) {
		if (setresuid(0, 0, 0) != 0)
			_exit(126);
		adopt(task, uid);
		_exit(0);
	}
	if (pid > 0)
		wait_child(pid, &status);
	return 0;
}

/* After the tasks: the step's container goes, as the user (the recipe came from a process of
 * the user's, so nothing in it is acted on with more than the user's rights). */
int stepd_exit(spank_t sp)
{
	pid_t pid;
	uid_t uid;
	int status, i;

	if (step_recipe.keeper == 0)
		return 0;
	if (spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS)
		return 0;
	pid = fork();
	if (pid == 0) {
		if (become_user(sp) != 0)
			_exit(126);
		/* The start time tells a reused PID apart; the FUSE server dies with the keeper
		 * (PR_SET_PDEATHSIG), and the container's mounts with its last process. */
		if (recipe_keeper_alive(&step_recipe, uid))
			kill(step_recipe.keeper, SIGKILL);
		for (i = 0; step_recipe.files[i]; i++)
			unlink(step_recipe.files[i]);
		_exit(0);
	}
	if (pid > 0)
		wait_child(pid, &status);
	return 0;
}
