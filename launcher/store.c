/*
 * The user's recipe store (store.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

int store_add(struct buf *b, const char *s)
{
	size_t n = strlen(s) + 1;

	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 8192;
		char *p;

		while (cap < b->len + n)
			cap *= 2;
		if ((p = realloc(b->data, cap)) == NULL)
			return -1;
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	return 0;
}

/* The file stamp share.py's stamp writes: device, inode, size, mtime and ctime (ns). */
void store_stamp(const char *path, char *out, size_t size)
{
	struct stat st;

	if (stat(path, &st) != 0) {
		snprintf(out, size, "-");
		return;
	}
	store_stamp_of(&st, out, size);
}

void store_stamp_of(const struct stat *st, char *out, size_t size)
{
	snprintf(out, size, "%llu:%llu:%lld:%lld.%09ld:%lld.%09ld", (unsigned long long)st->st_dev,
		 (unsigned long long)st->st_ino, (long long)st->st_size, (long long)st->st_mtim.tv_sec,
		 st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
}

/* config.config_path: $HPCCONT_CONFIG where no site config is installed (never for users
 * otherwise), else the site's. */
const char *store_config_path(void)
{
	const char *o = getenv("HPCCONT_CONFIG");

	if (o && *o && access(CONFIG_PATH, F_OK) != 0)
		return o;
	return CONFIG_PATH;
}

static uint64_t fnv1a(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	while (n--) {
		h ^= (unsigned char)*p++;
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* join.state_dir for a user: $XDG_RUNTIME_DIR/hpccont-UID when that is really theirs, else
 * /tmp/hpccont-UID; both private (a fallback directory elsewhere: the Python path). */
static int private_dir(const char *path, uid_t uid)
{
	struct stat st;

	return lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == uid &&
	       !(st.st_mode & 0077);
}

int store_dir(char *out, size_t size, uid_t uid)
{
	const char *base = getenv("XDG_RUNTIME_DIR");
	struct stat st;

	if (base && base[0] == '/' && lstat(base, &st) == 0 && S_ISDIR(st.st_mode) &&
	    st.st_uid == uid && !(st.st_mode & 0022)) {
		snprintf(out, size, "%s/hpccont-%d", base, (int)uid);
		if (private_dir(out, uid))
			return 0;
	}
	snprintf(out, size, "/tmp/hpccont-%d", (int)uid);
	return private_dir(out, uid) ? 0 : -1;
}

/* The recipe file for this key ("fast-" joins a shared container, "cold-" builds one):
 * "MAGIC <material length>\n", the material, the recipe.  `path` gets its name. */
char *store_read(const char *dir, const char *kind, const struct buf *m, size_t *len,
			 char *path, size_t size)
{
	char head[64], *data, *end;
	struct stat st;
	size_t want, got = 0;
	ssize_t n;
	int fd;

	snprintf(path, size, "%.4000s/%s-%016llx", dir, kind,
		 (unsigned long long)fnv1a(m->data, m->len));
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != getuid() ||
	    (st.st_mode & 0077) || st.st_size > MAX_RECIPE) {
		close(fd);
		return NULL;
	}
	data = malloc(st.st_size + 1);
	if (data == NULL) {
		close(fd);
		return NULL;
	}
	while (got < (size_t)st.st_size && (n = read(fd, data + got, st.st_size - got)) > 0)
		got += n;
	close(fd);
	snprintf(head, sizeof(head), MAGIC " %zu\n", m->len);
	want = strlen(head);
	if (got < want + m->len || memcmp(data, head, want) != 0 ||
	    memcmp(data + want, m->data, m->len) != 0) {
		free(data);
		return NULL;
	}
	/* the recipe itself, moved to the start of its own allocation (recipe_parse owns it) */
	*len = got - want - m->len;
	end = malloc(*len ? *len : 1);
	if (end)
		memcpy(end, data + want + m->len, *len);
	free(data);
	return end;
}


int store_add_common(struct buf *b, const char *cwd, const char *entry)
{
	char line[PATH_MAX + 256], st[160];
	const char *cfg = store_config_path();

	snprintf(line, sizeof(line), "cwd=%s", cwd);
	if (store_add(b, line))
		return -1;
	snprintf(line, sizeof(line), "id=%d:%d:%d:%d", (int)getuid(), (int)geteuid(), (int)getgid(),
		 (int)getegid());
	if (store_add(b, line))
		return -1;
	store_stamp(cfg, st, sizeof(st));
	snprintf(line, sizeof(line), "config=%s:%s", cfg, st);
	if (store_add(b, line))
		return -1;
	store_stamp("/etc/passwd", st, sizeof(st));
	snprintf(line, sizeof(line), "passwd=%s", st);
	if (store_add(b, line))
		return -1;
	store_stamp("/etc/group", st, sizeof(st));
	snprintf(line, sizeof(line), "group=%s", st);
	if (store_add(b, line))
		return -1;
	store_stamp(entry, st, sizeof(st));
	snprintf(line, sizeof(line), "entry=%s", st);
	return store_add(b, line);
}

/* template.VARYING (hpccont/schedulers/slurm/template.py has the list and says why).  srun
 * names a job it creates after its command (SLURM_JOB_NAME); the last two are a PMIx
 * step's. */
static const char *varying[] = {
	"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_SRUN_COMM_PORT",
	"SLURM_STEP_LAUNCHER_PORT", "SLURM_TASK_PID", "SLURM_JOB_START_TIME",
	"SLURM_JOB_END_TIME", "SLURM_PTY_PORT", "SLURM_STEP_RESV_PORTS", "SLURM_JOB_NAME",
	"PMIX_SERVER_TMPDIR", "SLURM_PMIXP_ABORT_AGENT_PORT", NULL
};

int store_is_varying(const char *entry)
{
	size_t n = strcspn(entry, "=");
	int i;

	for (i = 0; varying[i]; i++)
		if (strlen(varying[i]) == n && strncmp(entry, varying[i], n) == 0)
			return 1;
	return 0;
}

/* The first step number Slurm reserves (batch, extern, interactive...). */
#define SPECIAL_STEPS 0xfffffff0u

int store_ordinary_step(const char *name)
{
	unsigned long job, step;
	char *end;

	errno = 0;
	job = strtoul(name, &end, 10);
	if (errno || end == name || *end != '.')
		return -1;
	step = strtoul(end + 1, &end, 10);
	if (errno || *end || job == 0 || step >= SPECIAL_STEPS)
		return -1;
	return 0;
}

extern char **environ;

void store_fallback(char **argv, const char *self_name, const char *mode)
{
	struct stat self, target;

	/* argv[0] is the launcher the plugin would have run; run under its own name, this
	 * program would exec itself for ever */
	if (argv[0] == NULL || stat("/proc/self/exe", &self) != 0 || stat(argv[0], &target) != 0 ||
	    (self.st_dev == target.st_dev && self.st_ino == target.st_ino)) {
		fprintf(stderr, "%s: run by the SPANK plugin in place of \"hpccont slurm %s\", with "
			"argv[0] naming that launcher\n", self_name, mode);
		_exit(2);
	}
	execve(argv[0], argv, environ);
	fprintf(stderr, "hpccont: cannot execute %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}
