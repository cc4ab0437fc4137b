/*
 * hpccont's exec fast path: a launch that joins a container already mounted for the same plan,
 * with no Python interpreter.
 *
 * Installed as "hpccont" and "run-singularity" in front of the Python entry points.  It decides
 * nothing: a Python launch that shared a container (hpccont/runtime/share.py) wrote a *recipe*
 * for it, in the launch recipe format the Slurm tasks use, keyed by everything its plan was
 * made from (the words up to the image, the working directory, the ids, the image's, site
 * config's, /etc/passwd's and /etc/group's file stamps, the whole environment).  Here the same
 * key is computed; when a recipe with exactly that key exists and its keeper is alive, it is
 * applied by the same code that starts Slurm tasks (spank_plugin/recipe.c).  A launch with a
 * container of its own leaves a cold recipe under the same key instead (hpccont/runtime/cold.py):
 * the whole build, which cold.c applies before the same exec.  Anything else (no recipe,
 * another key, a dead keeper, root, an option the recipe was not made for, a host that changed
 * under a cold recipe) execs the Python entry point with the same arguments and environment,
 * which plans as always.
 *
 * Identical launches that start together with nothing to replay (a job starting 32 at once;
 * the first ones after a shared container's keeper left) would all run Python, though the
 * first of them writes the recipe the others could use.  So they elect one (elect()): it runs
 * Python holding a lock that goes once its recipe is written (hpccont/runtime/pending.py), the
 * others wait for that lock and look again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cold.h"
#include "recipe.h"
#include "store.h"

#ifndef PY_BINDIR
#define PY_BINDIR "/opt/hpccont/venv/bin"
#endif
/* Where the entry points stamped into the key are: PY_BINDIR, except in the tests' launcher
 * that falls back nowhere (proof that a launch took a C path). */
#ifndef ENTRY_BINDIR
#define ENTRY_BINDIR PY_BINDIR
#endif
#define MAX_CANDIDATES 6
#define PENDING_FD 1023          /* runtime/pending.FD: where the elected launch's lock goes */
#define PENDING_WAIT_S 120       /* then the others run Python after all */

extern char **environ;

static const char *kind_of(const char *argv0)
{
	const char *base = strrchr(argv0, '/');

	base = base ? base + 1 : argv0;
	return strcmp(base, "run-singularity") == 0 ? "run-singularity" : "hpccont";
}

static void fallback(char **argv, const char *kind)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", PY_BINDIR, kind);
	execv(path, argv);
	fprintf(stderr, "hpccont: cannot execute %s: %s\n", path, strerror(errno));
	_exit(127);
}

/* share.fast_material: the key, as NUL-terminated strings. */
static int material(struct buf *b, const char *kind, char **head, int nhead, const char *cwd)
{
	char line[PATH_MAX + 256], st[160];
	char **e;
	int i, n = 0;

	b->len = 0;
	snprintf(line, sizeof(line), "n=%d", nhead);
	if (store_add(b, MAGIC) || store_add(b, kind) || store_add(b, line))
		return -1;
	for (i = 0; i < nhead; i++)
		if (store_add(b, head[i]))
			return -1;
	snprintf(line, sizeof(line), "%s/%s", ENTRY_BINDIR, kind);
	if (store_add_common(b, cwd, line))
		return -1;
	store_stamp(head[nhead - 1], st, sizeof(st));
	snprintf(line, sizeof(line), "image=%s", st);
	if (store_add(b, line))
		return -1;
	for (e = environ; *e; e++)
		n++;
	snprintf(line, sizeof(line), "env=%d", n);
	if (store_add(b, line))
		return -1;
	for (e = environ; *e; e++)
		if (store_add(b, *e))
			return -1;
	return 0;
}

/* join._locked: an exclusive lock on a file that was not removed meanwhile. */
static int lock_file(const char *path, int op, int cloexec)
{
	struct stat a, b;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | (cloexec ? O_CLOEXEC : 0));

	if (fd < 0)
		return -1;
	if (flock(fd, op) != 0 || fstat(fd, &a) != 0 || stat(path, &b) != 0 ||
	    a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
		close(fd);
		return -1;
	}
	return fd;
}

static void woken(int sig)
{
	(void)sig;
}

/* The election among identical launches with no recipe to replay, on `pending` (the first
 * image candidate's recipe name + ".pending", in the private store).  1: this launch runs
 * Python, the lock on PENDING_FD (dup2: not close-on-exec, so it crosses the exec);
 * 0: another launch held it and has finished (its recipe may be there now); -1: neither. */
static int elect(const char *pending)
{
	struct sigaction sa = { .sa_handler = woken }, old;
	int fd = open(pending, O_RDONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
	unsigned int left;
	int got;

	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
		got = fcntl(PENDING_FD, F_GETFD) < 0 && errno == EBADF &&
		      dup2(fd, PENDING_FD) == PENDING_FD;
		close(fd);               /* the copy at PENDING_FD (if any) keeps the lock */
		return got ? 1 : -1;
	}
	if (errno != EWOULDBLOCK) {
		close(fd);
		return -1;
	}
	/* Wait for the elected launch, a bounded time: an alarm interrupts flock (no SA_RESTART).
	 * An alarm the caller left pending crosses exec: keep it, and do not wait. */
	left = alarm(0);
	if (left != 0) {
		alarm(left);
		close(fd);
		return -1;
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, &old);
	alarm(PENDING_WAIT_S);
	got = flock(fd, LOCK_SH);
	alarm(0);
	sigaction(SIGALRM, &old, NULL);
	close(fd);
	return got == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	const char *kind = kind_of(argv[0] ? argv[0] : "");
	char dir[PATH_MAX], cwd[PATH_MAX], path[PATH_MAX + 32];
	char pending[PATH_MAX + 48] = "";
	struct buf m = {0};
	struct recipe r;
	char *data = NULL, **cmd = NULL;
	size_t len = 0;
	int first, i, tried, lock = -1, guests = -1, dashdash, round;

	if (argc < 2 || geteuid() == 0 || getcwd(cwd, sizeof(cwd)) == NULL ||
	    store_dir(dir, sizeof(dir), getuid()) != 0)
		fallback(argv, kind);
	first = 1;
	if (strcmp(kind, "hpccont") == 0) {
		if (argc < 3 || (strcmp(argv[1], "exec") && strcmp(argv[1], "run") &&
				 strcmp(argv[1], "shell") && strcmp(argv[1], "test")))
			fallback(argv, kind);
		first = 2;
	}
	/* Round 0 as found; round 1 after waiting for an elected launch that had the lock. */
	for (round = 0; round < 2; round++) {
		cmd = NULL;
		tried = dashdash = 0;
		/* The image is the first word that is not an option, unless that word is an
		 * option's value: each such word is tried as the image, and only a head that a
		 * Python launch planned (ending in its image) has a recipe.  run-singularity IMAGE
		 * ARGS: argv[1]. */
		for (i = first; i < argc && tried < MAX_CANDIDATES; i++) {
			if (first == 2 && !dashdash && argv[i][0] == '-') {
				dashdash = strcmp(argv[i], "--") == 0;
				continue;
			}
			tried++;
			if (material(&m, kind, argv + 1, i, cwd) != 0)
				break;
			data = store_read(dir, "fast", &m, &len, path, sizeof(path));
			if (tried == 1)
				snprintf(pending, sizeof(pending), "%s.pending", path);
			if (data == NULL)
				data = store_read(dir, "cold", &m, &len, path, sizeof(path));
			if (data != NULL) {
				if (recipe_parse(&r, data, len) == 0)
					cmd = argv + i + 1;
				break;
			}
			if (first == 1 || dashdash)
				break;
		}
		if (cmd != NULL && recipe_fits(&r, cmd)) {
			if (r.build && r.exact)
				cold_build(&r, cmd, path);   /* returns only when nothing has changed */
			if (!r.build && r.exact && r.lock && r.guests) {
				/* join.apply_joined's order: .lock, then .guests shared; the guests
				 * descriptor stays open through the exec (the command holds the
				 * container while it runs). */
				lock = lock_file(r.lock, LOCK_EX, 1);
				if (lock >= 0)
					guests = lock_file(r.guests, LOCK_SH, 0);
				if (guests >= 0 && recipe_keeper_alive(&r, getuid()))
					recipe_exec(&r, cmd, environ);   /* returns only when nothing has changed */
				if (guests >= 0)
					close(guests);
				if (lock >= 0)
					close(lock);
				guests = lock = -1;
			}
		}
		/* Nothing replayed: elect the launch that runs Python, or wait for it. */
		if (round == 1 || !pending[0] || elect(pending) != 0)
			break;
	}
	free(m.data);
	fallback(argv, kind);
	return 127;
}
