/*
 * A cold start without an interpreter: the whole rootless launch that a Python launch planned
 * and recorded (hpccont/runtime/cold.py), applied again in C.
 *
 * Python made every decision: the mount list in order, each bind's flags, the identity files'
 * contents, the program's environment after the image's env scripts, the files the page-cache
 * reader reads.  This file performs the same system calls as hpccont/runtime/apply.py, in the
 * same order (its docstring numbers the steps), and then execs as the joining path does
 * (recipe_run, spank_plugin/recipe.c).  fast.c finds the recipe by the launch's key, which
 * holds everything the plan was made from; what the host may change under a recipe (a bind
 * source removed, squashfuse uninstalled) is checked before anything is changed, and such a
 * launch goes to Python, which plans it again.
 *
 * Kernel rules (apply.py has them at more length):
 * - unshare(CLONE_NEWUSER | CLONE_NEWNS): we are root of a new user namespace that owns the
 *   new mount namespace, so we may mount there.  "setgroups deny" must be written before
 *   gid_map by a process without CAP_SETGID in the parent namespace; the nested namespace
 *   made last inherits the denial.
 * - Mounts go onto an O_PATH descriptor of the mount point (/proc/self/fd/N), found by a walk
 *   that never follows a link out of the container's root: the directory mounted on is the one
 *   checked, whatever the tree does meanwhile.
 * - A bind remount must keep the flags the kernel locked on the source mount (nosuid, nodev,
 *   noexec, ro, atime): remounting without one of them is refused (EPERM) in a user namespace.
 * - pivot_root(".", ".") stacks the old root on the new one; MNT_DETACH then drops it.
 * - After pivot_root, /proc is the container's (a bind of the host's): /proc/self still works.
 * - Once unshare has succeeded there is no way back to the caller's namespaces, so a failure
 *   after it is final: one line, exit 255, and the recipe is removed so that the next launch
 *   is planned by Python again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cold.h"

extern char **environ;

#define MAX_ARGS 4
#define MAX_DEPTH 256
#define MAX_LINKS 40               /* rootpath.MAX_LINKS */
#define CHUNK (128 * 1024)         /* prefetch.CHUNK: one squashfs block per read */
#define FILE_BUDGET (8 << 20)      /* prefetch.FILE_BUDGET */
#define TOTAL_BUDGET (24 << 20)    /* prefetch.TOTAL_BUDGET */

struct op {
	char kind;                 /* b bind, p proc, t tmpfs, f fs, l symlink, c content */
	const char *flags;         /* r readonly, o optional, C clamp, x executable content */
	const char *arg[MAX_ARGS];
	int nargs;
};

static const char *recipe_file;    /* removed when the build fails after unshare */

static void fail(const char *what, const char *path)
{
	int e = errno;

	if (recipe_file)
		unlink(recipe_file);
	fprintf(stderr, "hpccont: cannot start container (%s%s): %s\n", what, path ? path : "",
		strerror(e));
	_exit(255);
}

static int has(const struct op *o, char flag)
{
	return strchr(o->flags, flag) != NULL;
}

/* The 'M' fields (an operation, its kind and flags) and the 'A' fields after each (its
 * arguments), in recipe order. */
static struct op *parse_ops(const struct recipe *r, int *count)
{
	size_t i = 0;
	int n = 0;
	struct op *ops;

	while (i < r->len) {
		n += r->data[i] == 'M';
		i += strlen(r->data + i) + 1;
	}
	ops = calloc(n + 1, sizeof(*ops));
	if (ops == NULL)
		return NULL;
	n = -1;
	for (i = 0; i < r->len; i += strlen(r->data + i) + 1) {
		const char *f = r->data + i;

		if (f[0] == 'M' && f[1]) {
			n++;
			ops[n].kind = f[1];
			ops[n].flags = f + 2;
		} else if (f[0] == 'A') {
			if (n < 0 || ops[n].nargs == MAX_ARGS) {
				free(ops);
				return NULL;
			}
			ops[n].arg[ops[n].nargs++] = f + 1;
		}
	}
	*count = n + 1;
	return ops;
}

static int wants(const struct op *o)
{
	switch (o->kind) {
	case 'p': return 1;
	case 't': case 'l': return 2;
	case 'b': case 'f': case 'c': return 3;
	}
	return -1;
}

/* A bind source still resolves to the path the plan judged (the bind policy compares
 * resolved paths: a link retargeted since must be judged again), or is an optional source
 * that is simply gone (skipped, as Python skips it). */
static int same_source(const struct op *o)
{
	char real[PATH_MAX];
	struct stat st;

	if (stat(o->arg[0], &st) != 0)
		return has(o, 'o');
	return realpath(o->arg[0], real) != NULL && strcmp(real, o->arg[2]) == 0;
}

/* What may have changed on the host since the plan was made, checked before any change:
 * the FUSE server and its caching adapter, the staging directory, and every bind source. */
static int usable(const struct recipe *r, const struct op *ops, int n)
{
	const char *server = recipe_field(r, 'Q'), *stage = recipe_field(r, 'S');
	const char *preload = recipe_field(r, 'P');
	struct stat st;
	int i;

	/* the staging directory is in the installed package: gone after a move or an upgrade */
	if (!server || !recipe_field(r, 'I') || !recipe_field(r, 'J') || !stage ||
	    !recipe_field(r, 'T') || !recipe_field(r, 'Y') || access(server, X_OK) != 0 ||
	    stat(stage, &st) != 0 || !S_ISDIR(st.st_mode) ||
	    (preload && access(preload, R_OK) != 0))
		return 0;
	for (i = 0; i < n; i++) {
		if (wants(&ops[i]) != ops[i].nargs)
			return 0;
		if (ops[i].kind == 'b' && !same_source(&ops[i]))
			return 0;
	}
	return 1;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	size_t n = strlen(text);

	if (fd < 0 || write(fd, text, n) != (ssize_t)n)
		fail("writing ", path);
	close(fd);
}

/* One id each way: "INSIDE OUTSIDE 1" in uid_map and gid_map. */
static void id_maps(unsigned int uid_in, unsigned int uid_out, unsigned int gid_in,
		    unsigned int gid_out, int deny_setgroups)
{
	char map[64];

	if (deny_setgroups)
		write_file("/proc/self/setgroups", "deny");
	snprintf(map, sizeof(map), "%u %u 1", uid_in, uid_out);
	write_file("/proc/self/uid_map", map);
	snprintf(map, sizeof(map), "%u %u 1", gid_in, gid_out);
	write_file("/proc/self/gid_map", map);
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
		     const char *data, const char *what)
{
	if (mount(src, dst, type, flags, data) != 0)
		fail("mounting ", what);
}

/* Is nothing but "." components (and slashes) left in p?  As rootpath.components, which drops
 * them: "file/." names the file. */
static int nothing_left(const char *p)
{
	while (*p) {
		size_t len;

		while (*p == '/')
			p++;
		len = strcspn(p, "/");
		if (len && !(len == 1 && p[0] == '.'))
			return 0;
		p += len;
	}
	return 1;
}

/* rootpath.open_mountpoint: an O_PATH descriptor of container path `path` under rootfd, made
 * when missing (parents as directories, itself a directory or, !is_dir, an empty file).  One
 * component at a time relative to its parent's descriptor, links resolved as inside the root,
 * ".." above the root refused (or, clamp, kept at the root).  -1 with errno on failure. */
static int mountpoint(int rootfd, const char *path, int is_dir, int clamp)
{
	char rest[2 * PATH_MAX + 2], link[PATH_MAX], part[NAME_MAX + 1], tmp[2 * PATH_MAX + 2];
	int stack[MAX_DEPTH], depth = 0, links = 0, fd, i;
	const char *p;
	struct stat st;

	if (snprintf(rest, sizeof(rest), "%s", path) >= (int)sizeof(rest)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if ((stack[depth++] = fcntl(rootfd, F_DUPFD_CLOEXEC, 0)) < 0)
		return -1;
	p = rest;
	for (;;) {
		size_t len;
		int last;

		while (*p == '/')
			p++;
		if (*p == '\0') {
			fd = stack[--depth];          /* the root itself */
			break;
		}
		len = strcspn(p, "/");
		if (len > NAME_MAX) {
			errno = ENAMETOOLONG;
			goto bad;
		}
		memcpy(part, p, len);
		part[len] = '\0';
		p += len;
		if (strcmp(part, ".") == 0)
			continue;
		if (strcmp(part, "..") == 0) {
			if (depth > 1)
				close(stack[--depth]);
			else if (!clamp) {
				errno = EXDEV;
				goto bad;
			}
			continue;
		}
		ssize_t n = readlinkat(stack[depth - 1], part, link, sizeof(link) - 1);
		if (n >= 0) {
			if (++links > MAX_LINKS) {
				errno = ELOOP;
				goto bad;
			}
			link[n] = '\0';
			if (link[0] == '/')
				while (depth > 1)
					close(stack[--depth]);
			if (snprintf(tmp, sizeof(tmp), "%s/%s", link, p) >= (int)sizeof(tmp)) {
				errno = ENAMETOOLONG;
				goto bad;
			}
			memcpy(rest, tmp, strlen(tmp) + 1);
			p = rest;
			continue;
		}
		last = nothing_left(p);
		fd = openat(stack[depth - 1], part, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 && errno == ENOENT) {
			int made;

			if (is_dir || !last) {
				made = mkdirat(stack[depth - 1], part, 0755) == 0;
			} else {
				int f = openat(stack[depth - 1], part, O_CREAT | O_EXCL | O_NOFOLLOW |
					       O_WRONLY | O_CLOEXEC, 0644);
				made = f >= 0;
				if (made)
					close(f);
			}
			if (!made && errno != EEXIST)
				goto bad;
			if (!made && ++links > MAX_LINKS) {   /* it appeared meanwhile: look again */
				errno = ELOOP;
				goto bad;
			}
			if (!made) {
				p -= len;
				continue;
			}
			fd = openat(stack[depth - 1], part, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		}
		if (fd < 0)
			goto bad;
		if (fstat(fd, &st) != 0 || S_ISLNK(st.st_mode) || (!last && !S_ISDIR(st.st_mode))) {
			errno = S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR;
			close(fd);
			goto bad;
		}
		if (last)
			break;
		if (depth == MAX_DEPTH) {
			close(fd);
			errno = ENAMETOOLONG;
			goto bad;
		}
		stack[depth++] = fd;
	}
	for (i = 0; i < depth; i++)
		close(stack[i]);
	return fd;
bad:
	i = errno;
	while (depth > 0)
		close(stack[--depth]);
	errno = i;
	return -1;
}

/* kernel.locked_flags: the MS_* flags a bind remount of `at` must keep. */
static unsigned long locked_flags(const char *at)
{
	static const unsigned long map[][2] = {
		{ST_RDONLY, MS_RDONLY}, {ST_NOSUID, MS_NOSUID}, {ST_NODEV, MS_NODEV},
		{ST_NOEXEC, MS_NOEXEC}, {ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME},
		{ST_RELATIME, MS_RELATIME},
	};
	struct statvfs sv;
	unsigned long flags = 0;
	size_t i;

	if (statvfs(at, &sv) != 0)
		fail("statvfs ", at);
	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (sv.f_flag & map[i][0])
			flags |= map[i][1];
	return flags;
}

static int open_point(int rootfd, const char *target, int is_dir, int clamp, char *at,
		      size_t size)
{
	int fd = mountpoint(rootfd, target, is_dir, clamp);

	if (fd < 0) {
		if (errno == EXDEV)
			errno = EPERM;   /* a destination that climbs out: Python refused it too */
		fail("mounting ", target);
	}
	snprintf(at, size, "/proc/self/fd/%d", fd);
	return fd;
}

/* apply._apply_mount for a bind: recursive bind, then the same walk again (it now ends on the
 * new mount, checked to be the source) and the remount with our flags and the locked ones. */
static void bind(int rootfd, const char *source, const char *target, int readonly, int clamp)
{
	char at[64];
	struct stat here, src;
	unsigned long flags;
	int fd, is_dir = stat(source, &src) == 0 && S_ISDIR(src.st_mode);

	fd = open_point(rootfd, target, is_dir, clamp, at, sizeof(at));
	do_mount(source, at, NULL, MS_BIND | MS_REC, NULL, target);
	close(fd);
	fd = open_point(rootfd, target, is_dir, clamp, at, sizeof(at));
	if (fstat(fd, &here) != 0 || stat(source, &src) != 0 || here.st_dev != src.st_dev ||
	    here.st_ino != src.st_ino) {
		errno = EBUSY;
		fail("mount point changed while it was being mounted: ", target);
	}
	flags = MS_REMOUNT | MS_BIND | MS_NOSUID | locked_flags(at) | (readonly ? MS_RDONLY : 0);
	do_mount(NULL, at, NULL, flags, NULL, target);
	close(fd);
}

/* apply._generated_file / _identity_file: the content Python made, in a private file under
 * the staging tmpfs, bound read-only at the target. */
static void content(int rootfd, const char *files, const struct op *o)
{
	char path[PATH_MAX];
	size_t n = strlen(o->arg[2]);
	int fd;

	if (strchr(o->arg[0], '/') || snprintf(path, sizeof(path), "%s/%s", files, o->arg[0]) >=
	    (int)sizeof(path)) {
		errno = EINVAL;
		fail("writing ", o->arg[0]);
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, has(o, 'x') ? 0755 : 0644);
	if (fd < 0 || write(fd, o->arg[2], n) != (ssize_t)n)
		fail("writing ", path);
	close(fd);
	bind(rootfd, path, o->arg[1], 1, has(o, 'C'));
}

/* apply._make_symlink: in its directory's descriptor, unless something is there already. */
static void symlink_at(int rootfd, const char *text, const char *target)
{
	char parent[PATH_MAX], at[64];
	const char *name = strrchr(target, '/');
	int fd;

	if (name == NULL || name[1] == '\0' || (size_t)(name - target) >= sizeof(parent)) {
		errno = EINVAL;
		fail("linking ", target);
	}
	memcpy(parent, target, name - target);
	parent[name - target] = '\0';
	fd = open_point(rootfd, parent[0] ? parent : "/", 1, 0, at, sizeof(at));
	if (symlinkat(text, fd, name + 1) != 0 && errno != EEXIST)
		fail("linking ", target);
	close(fd);
}

static void apply_op(int rootfd, const char *files, const struct op *o)
{
	char at[64];
	struct stat st;
	int fd;

	switch (o->kind) {
	case 'b':
		if (has(o, 'o') && stat(o->arg[0], &st) != 0)
			return;                     /* optional, and not on this host now */
		bind(rootfd, o->arg[0], o->arg[1], has(o, 'r'), has(o, 'C'));
		return;
	case 'c':
		content(rootfd, files, o);
		return;
	case 'l':
		symlink_at(rootfd, o->arg[0], o->arg[1]);
		return;
	}
	fd = open_point(rootfd, o->arg[o->kind == 'f'], 1, 0, at, sizeof(at));
	if (o->kind == 'p')
		do_mount("proc", at, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, o->arg[0]);
	else if (o->kind == 't')
		do_mount("tmpfs", at, "tmpfs", MS_NOSUID | MS_NODEV, o->arg[1], o->arg[0]);
	else
		/* devpts and mqueue may be mounted by root of a user namespace (FS_USERNS_MOUNT) */
		do_mount(o->arg[0], at, o->arg[0], MS_NOSUID | MS_NOEXEC |
			 (strcmp(o->arg[0], "devpts") ? MS_NODEV : 0), o->arg[2][0] ? o->arg[2] : NULL,
			 o->arg[1]);
	close(fd);
}

/* The server's LD_PRELOAD: the adapter first, then whatever the caller had (as apply does). */
static void set_preload(const char *preload)
{
	const char *had = getenv("LD_PRELOAD");
	char *both;

	if (had && *had && asprintf(&both, "%s %s", preload, had) > 0)
		setenv("LD_PRELOAD", both, 1);
	else
		setenv("LD_PRELOAD", preload, 1);
}

/* apply._serve_fuse: we mount /dev/fuse ourselves (root of the namespace) and hand the
 * descriptor to the server as /dev/fd/N, libfuse's "already mounted" convention. */
static pid_t serve_image(const struct recipe *r, const char *lower)
{
	char data[128], offset[64], dev[32];
	int fd = open("/dev/fuse", O_RDWR);     /* inherited on purpose: the server reads it */
	pid_t parent = getpid(), pid;

	if (fd < 0)
		fail("opening ", "/dev/fuse");
	snprintf(data, sizeof(data), "fd=%d,rootmode=40000,user_id=0,group_id=0,"
		 "default_permissions", fd);
	do_mount("squashfuse", lower, "fuse.squashfuse", MS_RDONLY | MS_NOSUID | MS_NODEV, data,
		 "the image");
	snprintf(offset, sizeof(offset), "offset=%s", recipe_field(r, 'J'));
	snprintf(dev, sizeof(dev), "/dev/fd/%d", fd);
	pid = fork();
	if (pid < 0)
		fail("starting ", "squashfuse");
	if (pid == 0) {
		const char *server = recipe_field(r, 'Q'), *preload = recipe_field(r, 'P');
		char *argv[] = {(char *)server, "-f", "-o", offset, (char *)recipe_field(r, 'I'),
				dev, NULL};
		int null;

		/* it ends with the process that becomes the command */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
			_exit(1);
		null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
		}
		if (preload)    /* apply.image_server_cache: for the server alone */
			set_preload(preload);
		execv(server, argv);
		_exit(127);
	}
	close(fd);
	return pid;
}

/* prefetch.start with the files Python's reader chose (resolved in the image at recording):
 * read front to back, one squashfs block per read, in a child, while the mounts are made.
 * Through a descriptor of the image root: pivot_root moves the child's root too. */
static pid_t start_reader(const struct recipe *r, const char *lower, char **cmd)
{
	const char *planned_for = recipe_field(r, 'V');
	pid_t parent = getpid(), pid;
	int rootfd, budget = TOTAL_BUDGET;
	size_t i;

	/* the list is the program's: for `exec`, only for the command it was made for (no 'V':
	 * the image's runscript, test script or shell, whatever the arguments) */
	if (recipe_field(r, 'R') == NULL ||
	    (planned_for != NULL && strcmp(planned_for, cmd[0] ? cmd[0] : "") != 0))
		return 0;
	rootfd = open(lower, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		return 0;
	pid = fork();
	if (pid != 0) {
		close(rootfd);
		return pid > 0 ? pid : 0;
	}
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
		_exit(0);
	static char buf[CHUNK];
	for (i = 0; i < r->len && budget > 0; i += strlen(r->data + i) + 1) {
		const char *f = r->data + i;
		off_t off = 0;
		ssize_t n;
		int fd;

		if (f[0] != 'R')
			continue;
		while (f[1] == '/')
			f++;
		fd = openat(rootfd, f + 1, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			continue;
		while (off < FILE_BUDGET && off < budget && (n = pread(fd, buf, CHUNK, off)) > 0)
			off += n;
		budget -= off;
		close(fd);
	}
	_exit(0);
}

int cold_setup(const struct recipe *r, char **cmd, const char *path)
{
	char lower[PATH_MAX], root[PATH_MAX], files[PATH_MAX];
	const char *stage = recipe_field(r, 'S');
	static const char *dirs[] = {"lower", "upper", "work", "root", "files"};
	unsigned int uid, gid;
	struct op *ops;
	int n, i, rootfd;
	pid_t reader, server;

	if (!r->build || strcmp(r->mode, "rootless") != 0 ||
	    sscanf(r->build, "%u %u", &uid, &gid) != 2 || (ops = parse_ops(r, &n)) == NULL)
		return -1;
	if (!usable(r, ops, n) || strlen(stage) > PATH_MAX - 16) {
		free(ops);
		return -1;
	}
	snprintf(lower, sizeof(lower), "%s/lower", stage);
	snprintf(root, sizeof(root), "%s/root", stage);
	snprintf(files, sizeof(files), "%s/files", stage);
	/* 1. namespaces: nothing has changed if this fails, so Python can still take over */
	if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
		free(ops);
		return -1;
	}
	recipe_file = path;
	id_maps(0, uid, 0, gid, 1);          /* we are root in it, owning the mount namespace */
	/* 2. nothing we mount propagates to the host */
	do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL, "/ private");
	/* 3. the staging tmpfs */
	do_mount("hpccont", stage, "tmpfs", MS_NOSUID | MS_NODEV, recipe_field(r, 'T'),
		 "the staging tmpfs");
	for (i = 0; i < 5; i++) {
		char d[PATH_MAX];

		snprintf(d, sizeof(d), "%s/%s", stage, dirs[i]);
		if (mkdir(d, 0755) != 0)
			fail("making ", d);
	}
	/* 4. the image, and the reader warming its page cache for the exec */
	server = serve_image(r, lower);
	reader = start_reader(r, lower, cmd);
	/* 5. the overlay (writable mount points over the read-only image), then the mounts */
	do_mount("overlay", root, "overlay", MS_NOSUID | MS_NODEV, recipe_field(r, 'Y'),
		 "the overlay");
	rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		fail("opening ", root);
	for (i = 0; i < n; i++)
		apply_op(rootfd, files, &ops[i]);
	close(rootfd);
	/* 6. the root read-only (not with --writable-tmpfs) */
	if (recipe_field(r, 'E'))
		do_mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
			 NULL, "the root read-only");
	/* 7. pivot into it and map back to the caller's ids in a nested namespace */
	if (chdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0 ||
	    umount2(".", MNT_DETACH) != 0 || chdir("/") != 0)
		fail("pivoting into ", "the container root");
	if (unshare(CLONE_NEWUSER) != 0)
		fail("mapping back to ", "the caller's ids");
	id_maps(uid, 0, gid, 0, 0);
	/* 8. ready once the reader is done (no child of ours left to the command) */
	if (reader > 0)
		waitpid(reader, NULL, 0);
	/* apply.check_servers: a server gone now would leave the command what the kernel had
	 * cached (the caching adapter lets lookups and opens stay there) and a fault elsewhere */
	if (waitpid(server, NULL, WNOHANG) == server) {
		errno = ENOTCONN;
		fail("the image's FUSE server exited", NULL);
	}
	recipe_file = NULL;
	free(ops);
	return 0;
}

void cold_build(const struct recipe *r, char **cmd, const char *path)
{
	char **env = recipe_environment(r, environ, cmd);

	if (env == NULL || cold_setup(r, cmd, path) != 0) {
		free(env);
		return;
	}
	recipe_run(r, cmd, env);
}
