/*
 * A Slurm step's accounting entry without an interpreter: "hpccont slurm account" for a step
 * whose entry Python has written before.
 *
 * The SPANK plugin runs this as root, from slurmstepd, once per node and step, in place of
 * the Python launcher (with the same arguments and root's fixed environment), when it is
 * beside that launcher and, like it, owned by root and writable by root only.  Python decides
 * everything: after writing an entry, "hpccont slurm account" recorded an *accounting
 * template* (hpccont/schedulers/slurm/accounting.py) in a directory only root can write,
 * keyed by everything the entry was made from except the step's own identity and this node's
 * index.  Here the same key is computed; with a template, the image is opened as the user
 * (a child that has become the user hands the descriptor over, as hpccont/privsep.py's
 * run_as_user does), and the entry is written only if that file is the one Python hashed:
 * same device, inode, size, mtime and ctime (no user can set a ctime back).  Anything else
 * (no template, another file, a node name JSON would escape) execs argv[0], the Python
 * launcher, with the same arguments and environment, which writes the entry as always.
 *
 * Root never opens a path the user named with root's credentials, never reads the job's
 * environment (it arrives only as "--jobenv" arguments, here only part of the key) and runs
 * nothing but the scontrol Python found in the system directories.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store.h"

#define ACCOUNT_MAGIC "hpccont-account-1"
#define MAX_GROUPS 1024
#define OPEN_TIMEOUT_MS 30000       /* as locate_image_as_user's */

/* What the plugin passed: --step J.S, --node N, --user U:G:G1,G2, --arg accounting=LOG. */
struct request {
	const char *step, *node, *user, *log;
	int nwords;                 /* the words before "--" */
};

/* The template's fields (accounting.template_fields). */
struct account_template {
	const char *image, *stamp, *line, *scontrol, *args;
	const char *env[16];
	int nenv;
};

static int parse_request(int argc, char **argv, struct request *q)
{
	int i;

	memset(q, 0, sizeof(*q));
	for (i = 3; i < argc && strcmp(argv[i], "--"); i++) {
		const char *next = i + 1 < argc ? argv[i + 1] : NULL;

		if (next == NULL)
			return -1;
		if (strcmp(argv[i], "--step") == 0)
			q->step = next;
		else if (strcmp(argv[i], "--node") == 0)
			q->node = next;
		else if (strcmp(argv[i], "--user") == 0)
			q->user = next;
		else if (strcmp(argv[i], "--arg") == 0 && strncmp(next, "accounting=", 11) == 0)
			q->log = next + 11;     /* the last one counts, as in plugin.parse_plugin_args */
		i++;
	}
	q->nwords = i - 3;
	/* No accounting= argument: the default log path is Python's to know. */
	return i < argc && q->step && q->user && q->log && q->log[0] == '/' ? 0 : -1;
}

/* A VARYING job variable's "--jobenv NAME=VALUE": not part of the key. */
static int varying_at(char **words, int i, int nwords)
{
	return strcmp(words[i], "--jobenv") == 0 && i + 1 < nwords && store_is_varying(words[i + 1]);
}

/* accounting.template_material: the number of words kept, the words (the step's name and the
 * node's index as "-", the VARYING job variables left out), then the common part with "/" and
 * the launcher. */
static int material(struct buf *b, char **words, int nwords, const char *entry)
{
	char line[32];
	int i, kept = 0;

	for (i = 0; i < nwords; i++)
		varying_at(words, i, nwords) ? i++ : kept++;
	snprintf(line, sizeof(line), "n=%d", kept);
	if (store_add(b, ACCOUNT_MAGIC) || store_add(b, line))
		return -1;
	for (i = 0; i < nwords; i++) {
		if (varying_at(words, i, nwords)) {
			i++;
			continue;
		}
		if (store_add(b, i > 0 && (strcmp(words[i - 1], "--step") == 0 ||
					   strcmp(words[i - 1], "--node") == 0) ? "-" : words[i]))
			return -1;
	}
	return store_add_common(b, "/", entry);
}

static int parse_template(char *data, size_t len, struct account_template *t)
{
	size_t i;

	memset(t, 0, sizeof(*t));
	for (i = 0; i < len; i += strlen(data + i) + 1) {
		char *f = data + i;

		switch (f[0]) {
		case 'i': t->image = f + 1; break;
		case 'k': t->stamp = f + 1; break;
		case 'l': t->line = f + 1; break;
		case 'x': t->scontrol = f + 1; break;
		case 'a': t->args = f + 1; break;
		case 'E':
			if (t->nenv >= (int)(sizeof(t->env) / sizeof(t->env[0])) - 1)
				return -1;
			t->env[t->nenv++] = f + 1;
			break;
		default:
			return -1;
		}
	}
	return t->image && t->stamp && t->line && (!t->scontrol == !t->args) ? 0 : -1;
}

/* "UID:GID:G1,G2,..." as the plugin prints it (plugin.parse_identity). */
static int parse_user(const char *text, uid_t *uid, gid_t *gid, gid_t *groups, int *ngroups)
{
	char *end;
	const char *p;

	*uid = strtoul(text, &end, 10);
	if (end == text || *end != ':')
		return -1;
	p = end + 1;
	*gid = strtoul(p, &end, 10);
	if (end == p || (*end != ':' && *end != '\0'))
		return -1;
	*ngroups = 0;
	if (*end == '\0')
		return 0;
	for (p = end + 1; *p; p = *end ? end + 1 : end) {
		if (*ngroups >= MAX_GROUPS)
			return -1;
		groups[(*ngroups)++] = strtoul(p, &end, 10);
		if (end == p || (*end != ',' && *end != '\0'))
			return -1;
	}
	return 0;
}

/* In a child that has become the user: privsep.open_checked (the path resolved, the file
 * opened without following a final symlink, without blocking on a FIFO), the descriptor sent
 * over `sock`.  Changing its ids makes the child non-dumpable: the user cannot trace it. */
static void open_as_user(const char *path, const char *user, int sock)
{
	char real[PATH_MAX], ctl[CMSG_SPACE(sizeof(int))] = {0}, ok = 'o';
	gid_t groups[MAX_GROUPS], gid;
	struct iovec iov = { .iov_base = &ok, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			      .msg_controllen = sizeof(ctl) };
	struct cmsghdr *c;
	struct stat st;
	int ngroups, fd;
	uid_t uid;

	if (parse_user(user, &uid, &gid, groups, &ngroups) != 0 || uid == 0 ||
	    setgroups(ngroups, groups) != 0 || setresgid(gid, gid, gid) != 0 ||
	    setresuid(uid, uid, uid) != 0)
		_exit(1);
	if (realpath(path, real) == NULL)
		_exit(1);
	fd = open(real, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		_exit(1);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	_exit(sendmsg(sock, &msg, 0) == 1 ? 0 : 1);
}

/* The image, opened as the user; -1 when that fails or takes longer than a user's open may. */
static int image_fd(const char *path, const char *user)
{
	char ctl[CMSG_SPACE(sizeof(int))] = {0}, ok = 0;
	struct iovec iov = { .iov_base = &ok, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			      .msg_controllen = sizeof(ctl) };
	struct cmsghdr *c;
	struct pollfd p;
	int sv[2], fd = -1, status;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
		return -1;
	pid = fork();
	if (pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	if (pid == 0) {
		close(sv[0]);
		open_as_user(path, user, sv[1]);
	}
	close(sv[1]);
	p.fd = sv[0];
	p.events = POLLIN;
	if (poll(&p, 1, OPEN_TIMEOUT_MS) == 1 && recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC) == 1 &&
	    ok == 'o' && (c = CMSG_FIRSTHDR(&msg)) != NULL && c->cmsg_level == SOL_SOCKET &&
	    c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	close(sv[0]);
	kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return fd;
}

/* store_stamp of an open regular file. */
static void fd_stamp(int fd, char *out, size_t size)
{
	struct stat st;

	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		snprintf(out, size, "-");
	else
		store_stamp_of(&st, out, size);
}

/* A value JSON (ensure_ascii) writes as it is: printable ASCII, no quote, no backslash. */
static int plain(const char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\')
			return 0;
	return 1;
}

/* The entry: the template's line with its open values filled in (OPEN_VALUES: \1 the job,
 * \2 the node, \3 the step, \4 the time) and a newline; NULL when a value is not plain. */
static char *entry_line(const char *line, const char *step, size_t *len)
{
	char job[32], node[256], now[64], *out, *p;
	const char *values[5], *dot = strchr(step, '.');
	struct utsname u;
	struct tm tm;
	time_t t = time(NULL);
	size_t n = 2;
	const char *s;

	tzset();         /* time.strftime's %z: the zone of /etc/localtime (root's env has no TZ) */
	if (dot == NULL || (size_t)(dot - step) >= sizeof(job) || uname(&u) != 0 ||
	    localtime_r(&t, &tm) == NULL || strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%S%z", &tm) == 0)
		return NULL;
	snprintf(job, sizeof(job), "%.*s", (int)(dot - step), step);
	snprintf(node, sizeof(node), "%.*s", (int)strcspn(u.nodename, "."), u.nodename);
	values[1] = job;
	values[2] = node;
	values[3] = dot + 1;
	values[4] = now;
	if (!plain(node))
		return NULL;
	for (s = line; *s; s++)
		n += *s >= 1 && *s <= 4 ? strlen(values[(int)*s]) : 1;
	if ((out = malloc(n)) == NULL)
		return NULL;
	for (s = line, p = out; *s; s++) {
		if (*s >= 1 && *s <= 4) {
			size_t k = strlen(values[(int)*s]);

			memcpy(p, values[(int)*s], k);
			p += k;
		} else {
			*p++ = *s;
		}
	}
	*p++ = '\n';
	*len = p - out;
	return out;
}

/* accounting._root_only_dir: a directory owned by root that nobody else may write. */
static int root_only_dir(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 &&
	       !(st.st_mode & 022);
}

/* accounting.append_entry: one write, O_APPEND (several steps write at once; a line stays
 * whole), in root's directory. */
static int append(const char *log, const char *line, size_t len)
{
	char dir[PATH_MAX];
	char *slash;
	int fd;
	ssize_t n;

	snprintf(dir, sizeof(dir), "%s", log);
	slash = strrchr(dir, '/');
	*(slash == dir ? slash + 1 : slash) = '\0';
	if (!root_only_dir(dir))
		return -1;
	fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (fd < 0)
		return -1;
	n = write(fd, line, len);
	close(fd);
	return n == (ssize_t)len ? 0 : -1;
}

/* accounting.set_admin_comment: scontrol in a session of its own, not waited for.  The step's
 * first node only (sets_admin_comment: --node 0, or no --node). */
static void admin_comment(const struct account_template *t, const struct request *q)
{
	char jobid[48];
	char *argv[] = { "scontrol", "update", jobid, (char *)t->args, NULL };
	int null;

	if (t->scontrol == NULL || (q->node && strcmp(q->node, "0")))
		return;
	snprintf(jobid, sizeof(jobid), "JobId=%.*s", (int)strcspn(q->step, "."), q->step);
	if (fork() != 0)
		return;
	null = open("/dev/null", O_RDWR);
	if (null < 0 || setsid() < 0)
		_exit(127);
	dup2(null, 0);
	dup2(null, 1);
	dup2(null, 2);
	execve(t->scontrol, argv, (char **)t->env);
	_exit(127);
}

int main(int argc, char **argv)
{
	char dir[PATH_MAX + 16], path[PATH_MAX + 64], stamp[160], *data, *line;
	struct account_template t;
	struct request q;
	struct buf m = {0};
	size_t len, line_len;
	int fd;

	/* hpccont slurm account --step J.S --arg A... --opt O... --user U --node N --jobenv E... -- */
	if (argc < 6 || getuid() != 0 || geteuid() != 0 || strcmp(argv[1], "slurm") ||
	    strcmp(argv[2], "account") || parse_request(argc, argv, &q) != 0 ||
	    store_ordinary_step(q.step) != 0 || chdir("/") != 0)
		store_fallback(argv, "hpccont-account", "account");
	snprintf(dir, sizeof(dir), "%s.templates", q.log);
	if (!root_only_dir(dir) || material(&m, argv + 3, q.nwords, argv[0]) != 0 ||
	    (data = store_read(dir, "account", &m, &len, path, sizeof(path))) == NULL ||
	    parse_template(data, len, &t) != 0)
		store_fallback(argv, "hpccont-account", "account");
	free(m.data);
	fd = image_fd(t.image, q.user);
	if (fd < 0)
		store_fallback(argv, "hpccont-account", "account");   /* Python says why */
	fd_stamp(fd, stamp, sizeof(stamp));
	close(fd);
	if (strcmp(stamp, t.stamp) != 0 || (line = entry_line(t.line, q.step, &line_len)) == NULL ||
	    append(q.log, line, line_len) != 0)
		store_fallback(argv, "hpccont-account", "account");
	admin_comment(&t, &q);
	return 0;
}
