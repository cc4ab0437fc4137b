/*
 * The user's recipe store: recipe files in the private state directory (runtime/join.py's
 * state_dir), each "MAGIC <material length>\n", the key material, the recipe fields
 * (hpccont/runtime/share.py write_recipe writes them).  Shared by the exec fast path (fast.c)
 * and the Slurm step builder (step.c).
 */
#ifndef HPCCONT_STORE_H
#define HPCCONT_STORE_H

#include <stddef.h>
#include <sys/types.h>

#define CONFIG_PATH "/etc/hpccont/hpccont.yaml"
#define MAGIC "hpccont-fast-1"
#define MAX_RECIPE (1 << 20)

/* Key material: NUL-terminated strings, one after the other. */
struct buf {
	char *data;
	size_t len, cap;
};

/* Append s and its NUL; -1 when out of memory. */
int store_add(struct buf *b, const char *s);

/* share.stamp: "dev:ino:size:mtime:ctime" (ns), or "-" for a path that cannot be stat'ed. */
void store_stamp(const char *path, char *out, size_t size);

/* The same stamp of a stat result (share.stamp_of). */
struct stat;
void store_stamp_of(const struct stat *st, char *out, size_t size);

/* config.config_path as a launch sees it. */
const char *store_config_path(void);

/* What every key holds, in this order: the working directory, the ids, the stamps of the
 * site config, /etc/passwd, /etc/group and `entry` (the Python entry point a C path falls
 * back to: each install rewrites it, so recipes planned by another version of hpccont are
 * never replayed). */
int store_add_common(struct buf *b, const char *cwd, const char *entry);

/* The state directory of uid (0), or -1 when there is no private one the C paths may use. */
int store_dir(char *out, size_t size, uid_t uid);

/* The recipe of KIND whose key material is exactly m, or NULL; `path` gets the file's name.
 * The returned fields (malloc'd, *len bytes) are for recipe_parse. */
char *store_read(const char *dir, const char *kind, const struct buf *m, size_t *len,
		 char *path, size_t size);

/* template.VARYING: is this "NAME=VALUE" one of the job variables that differ from step to
 * step whatever the user does (left out of the step and accounting keys)? */
int store_is_varying(const char *entry);

/* 0 for "JOB.STEP" of an ordinary step (both numbers as the plugin prints them), -1 for
 * anything else: the batch, extern and interactive steps are always left to Python. */
int store_ordinary_step(const char *name);

/* Exec argv[0], the Python launcher "hpccont slurm MODE" would have run, with the same
 * arguments and environment (never this program itself). */
void store_fallback(char **argv, const char *self_name, const char *mode) __attribute__((noreturn));

#endif
