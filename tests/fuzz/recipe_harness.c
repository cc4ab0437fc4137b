/*
 * Fuzz harness for the launch recipe's C readers: recipe_parse and recipe_environment
 * (spank_plugin/recipe.c, used by the Slurm tasks and by the exec fast path) and the fast
 * path's recipe file reader (launcher/store.c, store_read: header, key, then the recipe).
 *
 * One process reads every input from stdin, so thousands of inputs cost one start.  Records
 * (integers little-endian u32):
 *   0, recipe length, recipe, environment length, environment (NUL-terminated entries), argv0
 *      length, argv0  ->  u8 0 (refused) or 1, then for an accepted recipe the counts of its
 *      lists (a k u U s c f), the keep_only and exact flags, and the task environment it makes
 *      (u32 count, NUL-terminated entries), whether it fits argv0's command (recipe_fits),
 *      and a cold recipe's operations (one_build)
 *   1, file length, file  ->  u8 0 (store_read refused the file), 1 (read, recipe refused),
 *      2 (read and parsed); the key is the fixed material "hpccont-fast-1\0fuzz\0"
 *   3, root length, root, path length, path, u32 flags  ->  cold.c's mount-point walk
 *      (one_walk)
 * Built with -fsanitize=address,undefined where the compiler has them: a memory error aborts
 * the run and the test reports the input being read.
 */
#define main fast_main
#include "fast.c"
#undef main
#include "cold.c"
#include "store.c"

static int get_u32(uint32_t *v)
{
	unsigned char b[4];

	if (fread(b, 1, 4, stdin) != 4)
		return -1;
	*v = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
	return 0;
}

/* An exact-size allocation, so that ASan sees any read past the input's end. */
static char *get_bytes(uint32_t *len)
{
	char *p;

	if (get_u32(len) != 0)
		return NULL;
	p = malloc(*len ? *len : 1);
	if (p == NULL || fread(p, 1, *len, stdin) != *len) {
		free(p);
		return NULL;
	}
	return p;
}

static void put_u32(uint32_t v)
{
	unsigned char b[4] = { v & 0xff, v >> 8 & 0xff, v >> 16 & 0xff, v >> 24 };

	fwrite(b, 1, 4, stdout);
}

static uint32_t count(char **list)
{
	uint32_t n = 0;

	while (list[n])
		n++;
	return n;
}

/* What recipe_parse allocated (the plugin keeps its one recipe for the step's life). */
static void free_recipe(struct recipe *r)
{
	free(r->prefix);
	free(r->keep);
	free(r->unset);
	free(r->unset_prefix);
	free(r->set);
	free(r->copy);
	free(r->files);
	free(r->data);
}

/* A cold recipe's operations (cold.c parse_ops): u32 0xfffffffe (not a cold recipe),
 * 0xffffffff (refused) or the count, then each as its kind byte, flags (NUL-terminated) and
 * its arguments (u32 count, NUL-terminated strings). */
static void one_build(const struct recipe *r)
{
	struct op *ops;
	int n = 0, i, j;

	if (!r->build) {
		put_u32(0xfffffffe);
		return;
	}
	ops = parse_ops(r, &n);
	if (ops == NULL) {
		put_u32(0xffffffff);
		return;
	}
	put_u32(n);
	for (i = 0; i < n; i++) {
		fputc(ops[i].kind, stdout);
		fwrite(ops[i].flags, 1, strlen(ops[i].flags) + 1, stdout);
		put_u32(ops[i].nargs);
		for (j = 0; j < ops[i].nargs; j++)
			fwrite(ops[i].arg[j], 1, strlen(ops[i].arg[j]) + 1, stdout);
	}
	free(ops);
}

static int one_recipe(void)
{
	uint32_t rlen, elen, alen, i, n = 0;
	char *rdata = get_bytes(&rlen), *edata, *arg, **env, **out;
	char *argv[2] = { NULL, NULL };
	struct recipe r;

	if (rdata == NULL)
		return -1;
	edata = get_bytes(&elen);
	arg = edata ? get_bytes(&alen) : NULL;
	if (arg == NULL)
		return -1;
	env = calloc(elen + 1, sizeof(char *));
	for (i = 0; i < elen; i += strlen(edata + i) + 1)
		env[n++] = edata + i;
	if (alen) {                     /* argv strings end with their NUL */
		argv[0] = calloc(alen + 1, 1);
		memcpy(argv[0], arg, alen);
	}
	if (recipe_parse(&r, rdata, rlen) != 0) {
		fputc(0, stdout);
	} else {
		fputc(1, stdout);
		put_u32(count(r.prefix));
		put_u32(count(r.keep));
		put_u32(count(r.unset));
		put_u32(count(r.unset_prefix));
		put_u32(count(r.set));
		put_u32(count(r.copy));
		put_u32(count(r.files));
		put_u32(r.keep_only);
		put_u32(r.exact);
		recipe_keeper_alive(&r, getuid());
		out = recipe_environment(&r, env, argv);
		put_u32(count(out));
		for (i = 0; out[i]; i++)
			fwrite(out[i], 1, strlen(out[i]) + 1, stdout);
		free(out);
		put_u32(recipe_fits(&r, argv));
		one_build(&r);
		free_recipe(&r);
	}
	free(env);
	free(edata);
	free(arg);
	free(argv[0]);
	return 0;
}

static int one_file(const char *dir, const struct buf *m, const char *path)
{
	uint32_t flen;
	char *fdata = get_bytes(&flen), *data, buf[PATH_MAX + 32];
	size_t len = 0;
	struct recipe r;
	int fd;

	if (fdata == NULL)
		return -1;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, fdata, flen) != (ssize_t)flen || close(fd) != 0) {
		perror(path);
		exit(3);
	}
	free(fdata);
	data = store_read(dir, "fast", m, &len, buf, sizeof(buf));
	if (data == NULL) {
		fputc(0, stdout);
	} else if (recipe_parse(&r, data, len) != 0) {
		fputc(1, stdout);
	} else {
		fputc(2, stdout);
		free_recipe(&r);
	}
	return 0;
}

/* cold.c mountpoint(): root, path, flags (1 is_dir, 2 clamp) -> u8 0 and errno, or u8 1 and
 * the path of the descriptor it returns (NUL-terminated, from /proc/self/fd). */
static int one_walk(void)
{
	uint32_t rlen, plen, flags;
	char *root = get_bytes(&rlen), *path = root ? get_bytes(&plen) : NULL;
	char *rootz, *pathz, link[64], where[PATH_MAX];
	ssize_t n;
	int rootfd, fd;

	if (path == NULL || get_u32(&flags) != 0)
		return -1;
	rootz = strndup(root, rlen);
	pathz = strndup(path, plen);
	rootfd = open(rootz, O_PATH | O_DIRECTORY | O_CLOEXEC);
	errno = 0;
	fd = rootfd < 0 ? -1 : mountpoint(rootfd, pathz, flags & 1, flags & 2);
	if (fd < 0) {
		fputc(0, stdout);
		put_u32(errno);
	} else {
		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		n = readlink(link, where, sizeof(where) - 1);
		where[n > 0 ? n : 0] = '\0';
		fputc(1, stdout);
		fwrite(where, 1, strlen(where) + 1, stdout);
		close(fd);
	}
	if (rootfd >= 0)
		close(rootfd);
	free(root);
	free(path);
	free(rootz);
	free(pathz);
	return 0;
}

int main(int argc, char **argv)
{
	static const char key[] = "hpccont-fast-1\0fuzz";
	struct buf m = { (char *)key, sizeof(key), sizeof(key) };
	char path[PATH_MAX + 32];
	uint32_t kind;

	if (argc != 2)
		return 2;
	snprintf(path, sizeof(path), "%s/fast-%016llx", argv[1],
		 (unsigned long long)fnv1a(m.data, m.len));
	while (get_u32(&kind) == 0) {
		if ((kind == 0 ? one_recipe() : kind == 3 ? one_walk() : one_file(argv[1], &m, path)) != 0)
			return 4;
		fflush(stdout);
	}
	return 0;
}
