/*
 * Each task of a step enters the step's container here, in C: no interpreter per task.
 *
 * "hpccont slurm prepare" built the container once per node (a keeper process holds its
 * namespaces, hpccont/runtime/join.py) and described, as data, what the Python runtime would
 * do for a task: the namespaces to enter, the working directory, how the environment is made
 * (hpccont/runtime/environment.py, EnvDelta) and the env-script shell to go through.  This file
 * only applies that description.
 *
 * Kernel rules (the same as join.py _enter):
 * - Rootless containers have two user namespaces: the outer one (our uid mapped to root) owns
 *   the mount namespace, the nested one gives the user back their uid.  setns(CLONE_NEWNS)
 *   needs CAP_SYS_ADMIN in the user namespace owning the mount namespace, so the task enters
 *   the outer one first (found from the nested one with the NS_GET_PARENT ioctl; owned by our
 *   uid, so setns grants every capability in it), then the mount namespace, then the nested
 *   one (a child of the outer one, also ours) last, which drops those capabilities again.
 * - setns(CLONE_NEWUSER) refuses a multithreaded caller: a forked task has one thread.
 * - After setns(CLONE_NEWNS) root and cwd are the namespace's root, which is the container
 *   root because the keeper ran pivot_root there; the task then chdirs to its directory.
 * - Every /proc file is opened before the first setns: afterwards /proc is the container's view.
 * - PR_SET_NO_NEW_PRIVS before exec, as the runtime does: a setuid file in an image never
 *   gains privileges.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/nsfs.h>

#include "recipe.h"

extern char **environ;

static int count_tag(const char *data, size_t len, char tag)
{
	size_t i = 0;
	int n = 0;

	while (i < len) {
		if (data[i] == tag)
			n++;
		i += strlen(data + i) + 1;
	}
	return n;
}

static char **list_of(const char *data, size_t len, char tag)
{
	char **list = calloc(count_tag(data, len, tag) + 1, sizeof(char *));
	size_t i = 0;
	int n = 0;

	if (list == NULL)
		return NULL;
	while (i < len) {
		if (data[i] == tag)
			list[n++] = (char *)data + i + 1;
		i += strlen(data + i) + 1;
	}
	return list;
}

static const char *one_of(const char *data, size_t len, char tag)
{
	size_t i = 0;

	while (i < len) {
		if (data[i] == tag)
			return data + i + 1;
		i += strlen(data + i) + 1;
	}
	return NULL;
}

/* share.command_class: what of the command's words the exec part depends on (a shell gets a
 * prompt, a bare /bin/sh becomes bash). */
static const char *command_class(char **argv)
{
	if (argv == NULL || argv[0] == NULL)
		return "none";
	if (strcmp(argv[0], "/bin/sh") == 0 && argv[1] == NULL)
		return "sh1";
	if (strcmp(argv[0], "/bin/sh") == 0 || strcmp(argv[0], "/bin/bash") == 0)
		return "sh";
	return "";
}

int recipe_fits(const struct recipe *r, char **argv)
{
	const char *made_for = one_of(r->data, r->len, 'W');

	return made_for == NULL || strcmp(made_for, command_class(argv)) == 0;
}

const char *recipe_field(const struct recipe *r, char tag)
{
	return one_of(r->data, r->len, tag);
}

int recipe_parse(struct recipe *r, char *data, size_t len)
{
	const char *pid;
	char *end;
	long keeper;

	memset(r, 0, sizeof(*r));
	/* Every field ends with its NUL: a truncated recipe is refused, not half used. */
	if (len == 0 || data[len - 1] != '\0')
		goto bad;
	r->data = data;
	r->len = len;
	r->mode = one_of(data, len, 'm');
	pid = one_of(data, len, 'p');
	r->start = one_of(data, len, 't');
	r->host_cwd = one_of(data, len, 'h');
	r->cwd = one_of(data, len, 'w');
	r->lock = one_of(data, len, 'L');
	r->guests = one_of(data, len, 'G');
	r->keep_only = one_of(data, len, 'K') != NULL;
	r->exact = one_of(data, len, 'x') != NULL;
	r->build = one_of(data, len, 'B');
	if (!r->mode || !r->host_cwd || !r->cwd || (!r->build && (!pid || !r->start)))
		goto bad;
	if (strcmp(r->mode, "rootless") != 0 && strcmp(r->mode, "root") != 0)
		goto bad;
	if (!r->build) {
		/* a number that does not fit a pid would name another process once cast */
		errno = 0;
		keeper = strtol(pid, &end, 10);
		if (errno || *end || keeper <= 1 || keeper > INT_MAX)
			goto bad;
		r->keeper = (pid_t)keeper;
	}
	r->prefix = list_of(data, len, 'a');
	r->keep = list_of(data, len, 'k');
	r->unset = list_of(data, len, 'u');
	r->unset_prefix = list_of(data, len, 'U');
	r->set = list_of(data, len, 's');
	r->copy = list_of(data, len, 'c');
	r->files = list_of(data, len, 'f');
	if (!r->prefix || !r->keep || !r->unset || !r->unset_prefix || !r->set || !r->copy ||
	    !r->files)
		goto bad;
	return 0;
bad:
	free(data);
	memset(r, 0, sizeof(*r));
	return -1;
}

/* /proc/PID/stat field 22, after the last ')' (the command name may contain anything). */
int recipe_start_time(pid_t pid, char *out, size_t size)
{
	char path[64], buf[1024], *p, *tok, *save = NULL;
	ssize_t n;
	int fd, field;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')');
	if (p == NULL)
		return -1;
	/* field 3 (state) is the first after ')' */
	for (field = 3, tok = strtok_r(p + 1, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) {
		if (field == 22) {
			snprintf(out, size, "%s", tok);
			return 0;
		}
	}
	return -1;
}

int recipe_keeper_alive(const struct recipe *r, uid_t uid)
{
	char path[64], start[64];
	struct stat st;

	snprintf(path, sizeof(path), "/proc/%d", (int)r->keeper);
	if (stat(path, &st) != 0 || st.st_uid != uid)
		return 0;
	return recipe_start_time(r->keeper, start, sizeof(start)) == 0 && strcmp(start, r->start) == 0;
}

static size_t name_len(const char *entry)
{
	const char *eq = strchr(entry, '=');

	return eq ? (size_t)(eq - entry) : strlen(entry);
}

static int named(const char *entry, const char *name)
{
	size_t n = name_len(entry);

	return strlen(name) == n && strncmp(entry, name, n) == 0;
}

static int in_list(const char *entry, char **list)
{
	for (; *list; list++)
		if (named(entry, *list))
			return 1;
	return 0;
}

static int has_prefix(const char *entry, char **prefixes)
{
	for (; *prefixes; prefixes++)
		if (strncmp(entry, *prefixes, strlen(*prefixes)) == 0)
			return 1;
	return 0;
}

/* Replace NAME's entry or append; env has room (sized by the caller). */
static void put(char **env, int *n, char *entry)
{
	int i;

	for (i = 0; i < *n; i++) {
		if (name_len(env[i]) == name_len(entry) &&
		    strncmp(env[i], entry, name_len(entry)) == 0) {
			env[i] = entry;
			return;
		}
	}
	env[(*n)++] = entry;
	env[*n] = NULL;
}

static char *lookup(char **env, const char *name)
{
	for (; *env; env++)
		if (named(*env, name) && strchr(*env, '='))
			return *env;
	return NULL;
}

char **recipe_environment(const struct recipe *r, char **task_env, char **argv)
{
	int ntask = 0, nset = 0, ncopy = 0, n = 0;
	char **env, **e, *found;

	for (e = task_env; *e; e++)
		ntask++;
	for (e = r->set; *e; e++)
		nset++;
	for (e = r->copy; *e; e++)
		ncopy++;
	env = calloc(ntask + nset + ncopy + 2, sizeof(char *));
	if (env == NULL)
		return NULL;
	/* 1. keep only the --cleanenv names, or drop the host-only names and prefixes */
	for (e = task_env; *e; e++) {
		if (r->keep_only ? in_list(*e, r->keep)
				 : !in_list(*e, r->unset) && !has_prefix(*e, r->unset_prefix))
			env[n++] = *e;
	}
	env[n] = NULL;
	/* 2. the fixed values; 3. the per-task values passed by name */
	for (e = r->set; *e; e++)
		put(env, &n, *e);
	for (e = r->copy; *e; e++)
		if ((found = lookup(task_env, *e)) != NULL)
			put(env, &n, found);
	/* As apply.execute: an interactive shell gets the container prompt unless one is set
	 * (an exact recipe has it already when it applies). */
	if (!r->exact && argv[0] &&
	    (strcmp(argv[0], "/bin/sh") == 0 || strcmp(argv[0], "/bin/bash") == 0) &&
	    lookup(env, "PS1") == NULL)
		put(env, &n, "PS1=Hpccont> ");
	return env;
}

static void die(int status, const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "hpccont: ");
	fprintf(stderr, fmt, a, b);
	fputc('\n', stderr);
	_exit(status);
}

void recipe_exec(const struct recipe *r, char **argv, char **task_env)
{
	char cwd[PATH_MAX], **env;
	int nested = -1, outer = -1, mnt = -1, rootless;
	char path[64];

	if (argv == NULL || (argv[0] == NULL && r->prefix[0] == NULL))
		return;
	/* prepare resolved the image and the working directory from where it ran; a task that
	 * starts elsewhere (srun --chdir) gets the exact Python path instead. */
	if (getcwd(cwd, sizeof(cwd)) == NULL || strcmp(cwd, r->host_cwd) != 0)
		return;
	env = recipe_environment(r, task_env, argv);
	if (env == NULL)
		return;
	rootless = strcmp(r->mode, "rootless") == 0;
	snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)r->keeper);
	mnt = open(path, O_RDONLY | O_CLOEXEC);
	if (mnt < 0)
		goto fail;
	if (rootless) {
		snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)r->keeper);
		nested = open(path, O_RDONLY | O_CLOEXEC);
		if (nested < 0)
			goto fail;
		outer = ioctl(nested, NS_GET_PARENT);
		if (outer < 0)
			goto fail;
		/* Nothing has changed if this fails: the Python path can still run the task. */
		if (setns(outer, CLONE_NEWUSER) != 0)
			goto fail;
		if (setns(mnt, CLONE_NEWNS) != 0 || setns(nested, CLONE_NEWUSER) != 0)
			die(255, "cannot join the step's container: %s%s", strerror(errno), "");
	} else if (setns(mnt, CLONE_NEWNS) != 0) {
		goto fail;
	}
	close(mnt);
	if (nested >= 0)
		close(nested);
	if (outer >= 0)
		close(outer);
	/* From here on the task is in the container: it execs there or exits, never returns. */
	recipe_run(r, argv, env);
fail:
	if (mnt >= 0)
		close(mnt);
	if (nested >= 0)
		close(nested);
	if (outer >= 0)
		close(outer);
	free(env);
}

void recipe_run(const struct recipe *r, char **argv, char **env)
{
	char **full;
	int n = 0, i;

	if (chdir(r->cwd) != 0)
		die(255, "working directory %s is not usable in the container: %s", r->cwd,
		    strerror(errno));
	for (i = 0; r->prefix[i]; i++)
		n++;
	for (i = 0; argv[i]; i++)
		n++;
	full = calloc(n + 1, sizeof(char *));
	if (full == NULL)
		die(255, "out of memory%s%s", "", "");
	n = 0;
	for (i = 0; r->prefix[i]; i++)
		full[n++] = r->prefix[i];
	for (i = 0; argv[i]; i++)
		full[n++] = argv[i];
	/* As apply.execute: a bare /bin/sh becomes bash when the image has it. */
	if (!r->exact && r->prefix[0] == NULL && strcmp(full[0], "/bin/sh") == 0 && full[1] == NULL &&
	    access("/bin/bash", X_OK) == 0)
		full[0] = "/bin/bash";
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		die(255, "prctl(PR_SET_NO_NEW_PRIVS): %s%s", strerror(errno), "");
	/* execvp searches the PATH of environ, which must be the container's. */
	environ = env;
	execvp(full[0], full);
	if (errno == ENOENT || errno == ENOTDIR)
		die(127, "%s: command not found in the container%s", argv[0] ? argv[0] : full[0], "");
	die(126, "%s: cannot execute: %s", argv[0] ? argv[0] : full[0], strerror(errno));
}
