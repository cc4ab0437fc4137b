/*
 * The Slurm step's container without an interpreter: "hpccont slurm prepare" for a step whose
 * container Python has planned before.
 *
 * The SPANK plugin runs this (as the user, from slurmstepd, once per node and step) in place of
 * the Python launcher it would run, with the same arguments and the job's environment.  Python
 * decides everything: an earlier prepare with the same inputs recorded a *step template*
 * (hpccont/schedulers/slurm/template.py) keyed by what its plan was made from, the step's own
 * identity left out.  Here the same key is computed; with a template, the container is built
 * by cold.c's applier (the same system calls as Python's, in the same order), this program's
 * grandchild stays as its keeper, and the recipe for the step's tasks is printed exactly as
 * Python's prepare prints it.  Anything else (no template, another key, a file stamp that
 * changed, a build that failed) execs argv[0], the Python launcher, with the same arguments
 * and environment: it plans, builds and records as always.
 *
 * Why a key without the step: every step of every job differs in SLURM_JOB_ID, the ports of
 * its srun and so on, and these reach the tasks through their own environment, not through
 * the container.  Where the step's name ("JOB.STEP") is part of what Python planned (a PMIx
 * step's directories), the template holds a \001 byte in its place: Python recorded the
 * template only after planning the same step again under another name and finding the same
 * result with that name substituted.
 *
 * The keeper: double-forked (nobody's child, as runtime/join.py's), in the caller's cgroups
 * (the plugin moves it into the first task's), and it watches slurmstepd through a pidfd: when
 * slurmstepd is gone, whatever is left in its container is killed and it leaves.  At the step's
 * end the plugin kills it (SIGKILL); the FUSE server dies with it (PR_SET_PDEATHSIG) and the
 * mounts with the last process of the namespace.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cold.h"
#include "recipe.h"
#include "store.h"

#define STEP_MAGIC "hpccont-step-1"
#define PLACEHOLDER '\001'         /* template.PLACEHOLDER: the step's "JOB.STEP" */
extern char **environ;

/* template.material: the key, as NUL-terminated strings.  `words`: the arguments after
 * "slurm prepare", up to "--", the step's name left out. */
static int material(struct buf *b, const char *entry, char **argv, int nwords, const char *cwd)
{
	char line[PATH_MAX + 256];
	char **e;
	int i, n = 0;

	b->len = 0;
	snprintf(line, sizeof(line), "n=%d", nwords);
	if (store_add(b, STEP_MAGIC) || store_add(b, line))
		return -1;
	for (i = 0; i < nwords; i++)
		if (store_add(b, i > 0 && strcmp(argv[i - 1], "--step") == 0 ? "-" : argv[i]))
			return -1;
	if (store_add_common(b, cwd, entry))     /* entry: the launcher this falls back to */
		return -1;
	for (e = environ; *e; e++)
		n += !store_is_varying(*e);
	snprintf(line, sizeof(line), "env=%d", n);
	if (store_add(b, line))
		return -1;
	for (e = environ; *e; e++)
		if (!store_is_varying(*e) && store_add(b, *e))
			return -1;
	return 0;
}

/* The template's 'z' fields, "STAMP PATH": the files Python read while planning (the image,
 * slurm.conf) must be the ones it read. */
static int stamps_hold(const char *data, size_t len)
{
	char st[160];
	size_t i, n;

	for (i = 0; i < len; i += strlen(data + i) + 1) {
		const char *f = data + i, *space;

		if (f[0] != 'z')
			continue;
		space = strchr(f + 1, ' ');
		if (space == NULL)
			return 0;
		n = space - (f + 1);
		store_stamp(space + 1, st, sizeof(st));
		if (strlen(st) != n || strncmp(st, f + 1, n) != 0)
			return 0;
	}
	return 1;
}

/* The template with each placeholder replaced by the step's name (NULL: out of memory). */
static char *substitute(const char *data, size_t len, const char *name, size_t *out_len)
{
	size_t i, n = 0, k = strlen(name);
	char *out, *p;

	for (i = 0; i < len; i++)
		n += data[i] == PLACEHOLDER ? k : 1;
	out = malloc(n ? n : 1);
	if (out == NULL)
		return NULL;
	for (i = 0, p = out; i < len; i++) {
		if (data[i] == PLACEHOLDER) {
			memcpy(p, name, k);
			p += k;
		} else {
			*p++ = data[i];
		}
	}
	*out_len = n;
	return out;
}

/* Every other process in this mount namespace (the step's tasks, what they started). */
static void kill_guests(void)
{
	char mine[64], path[64], ns[64];
	struct dirent *d;
	ssize_t n;
	DIR *proc;

	n = readlink("/proc/self/ns/mnt", mine, sizeof(mine) - 1);
	if (n <= 0 || (proc = opendir("/proc")) == NULL)
		return;
	mine[n] = '\0';
	while ((d = readdir(proc)) != NULL) {
		int pid = atoi(d->d_name);

		if (pid <= 1 || pid == getpid())
			continue;
		snprintf(path, sizeof(path), "/proc/%d/ns/mnt", pid);
		n = readlink(path, ns, sizeof(ns) - 1);
		if (n > 0 && (ns[n] = '\0', strcmp(ns, mine) == 0))
			kill(pid, SIGKILL);
	}
	closedir(proc);
}

/* The keeper: build, report "ready PID" on `report`, then live as long as slurmstepd does. */
static void keeper(const struct recipe *r, char **cmd, const char *path, int report, int watch)
{
	char line[64];
	int null = open("/dev/null", O_RDWR), len;
	struct pollfd p = { .fd = watch, .events = POLLIN };

	/* no terminal, output pipe or launcher socket of the job stays open here: slurmstepd
	 * reads prepare's output until EOF, and srun waits for its pipes */
	if (null < 0)
		_exit(1);
	dup2(null, 0);
	dup2(null, 1);
	dup2(null, 2);
	if (null > 2)
		close(null);
	if (cold_setup(r, cmd, path) != 0)
		_exit(1);
	len = snprintf(line, sizeof(line), "ready %d\n", (int)getpid());
	if (write(report, line, len) != len)
		_exit(1);
	close(report);
	while (poll(&p, 1, -1) < 0 && errno == EINTR)
		;
	kill_guests();           /* nothing it served may outlive slurmstepd */
	_exit(0);
}

/* Start the keeper; its PID (0: it did not become ready). */
static pid_t start_keeper(const struct recipe *r, char **cmd, const char *path)
{
	char buf[64] = {0};
	int fds[2], watch, status;
	ssize_t n, got = 0;
	pid_t child;

	/* the keeper's watch on slurmstepd, our parent, taken before anything can reparent us */
	watch = (int)syscall(SYS_pidfd_open, getppid(), 0);
	if (watch < 0 || pipe2(fds, O_CLOEXEC) != 0)
		return 0;
	child = fork();
	if (child < 0)
		return 0;
	if (child == 0) {
		close(fds[0]);
		if (setsid() < 0)
			_exit(1);
		if (fork() != 0)
			_exit(0);
		keeper(r, cmd, path, fds[1], watch);
	}
	close(fds[1]);
	close(watch);
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	/* EOF when the keeper reported or died: cold_setup closes nothing it inherited */
	while (got < (ssize_t)sizeof(buf) - 1 &&
	       ((n = read(fds[0], buf + got, sizeof(buf) - 1 - got)) > 0 || (n < 0 && errno == EINTR)))
		got += n > 0 ? n : 0;
	close(fds[0]);
	if (strncmp(buf, "ready ", 6) != 0)
		return 0;
	return (pid_t)atoi(buf + 6);
}

/* The task recipe prepare prints (recipe.recipe_bytes): the template's task fields, then the
 * keeper and its start time. */
static int print_recipe(const char *data, size_t len, pid_t pid)
{
	char line[96], start[64];
	size_t i, n;

	if (recipe_start_time(pid, start, sizeof(start)) != 0)
		return -1;
	for (i = 0; i < len; i += n + 1) {
		n = strlen(data + i);
		if (strchr("mhwaKkuUsc", data[i]) && write(1, data + i, n + 1) != (ssize_t)n + 1)
			return -1;
	}
	n = snprintf(line, sizeof(line), "p%d%ct%s", (int)pid, '\0', start);
	return write(1, line, n + 1) == (ssize_t)n + 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
	char dir[PATH_MAX], cwd[PATH_MAX], path[PATH_MAX + 32];
	const char *pwd = getenv("PWD"), *name = NULL;
	struct buf m = {0};
	struct recipe r;
	struct stat st;
	char *data, *filled;
	size_t len, filled_len;
	int nwords;
	pid_t pid;

	/* hpccont slurm prepare --step J.S [--arg A] [--opt O]... -- COMMAND... */
	if (argc < 6 || geteuid() == 0 || strcmp(argv[1], "slurm") || strcmp(argv[2], "prepare") ||
	    store_dir(dir, sizeof(dir), getuid()) != 0)
		store_fallback(argv, "hpccont-step", "prepare");
	for (nwords = 0; 3 + nwords < argc && strcmp(argv[3 + nwords], "--"); nwords++)
		if (strcmp(argv[3 + nwords], "--step") == 0 && 4 + nwords < argc)
			name = argv[4 + nwords];
	if (3 + nwords >= argc || name == NULL || store_ordinary_step(name) != 0)
		store_fallback(argv, "hpccont-step", "prepare");
	/* recipe.run_prepare: slurmstepd's directory until the tasks change to the step's */
	if (pwd && *pwd && stat(pwd, &st) == 0 && S_ISDIR(st.st_mode) && chdir(pwd) == 0)
		snprintf(cwd, sizeof(cwd), "%s", pwd);
	else if (getcwd(cwd, sizeof(cwd)) == NULL)
		store_fallback(argv, "hpccont-step", "prepare");
	if (material(&m, argv[0], argv + 3, nwords, cwd) != 0 ||
	    (data = store_read(dir, "step", &m, &len, path, sizeof(path))) == NULL)
		store_fallback(argv, "hpccont-step", "prepare");
	free(m.data);
	if (!stamps_hold(data, len) || (filled = substitute(data, len, name, &filled_len)) == NULL)
		store_fallback(argv, "hpccont-step", "prepare");
	free(data);
	if (recipe_parse(&r, filled, filled_len) != 0 || r.build == NULL)
		store_fallback(argv, "hpccont-step", "prepare");
	pid = start_keeper(&r, argv + 4 + nwords, path);
	if (pid <= 0)
		store_fallback(argv, "hpccont-step", "prepare");          /* Python plans the step again (and records it again) */
	if (print_recipe(r.data, r.len, pid) != 0) {
		kill(pid, SIGKILL);
		store_fallback(argv, "hpccont-step", "prepare");
	}
	return 0;
}
