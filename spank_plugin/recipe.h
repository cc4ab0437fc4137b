/*
 * The step's shared container, entered by each task in C (see recipe.c).
 */
#ifndef HPCCONT_SPANK_RECIPE_H
#define HPCCONT_SPANK_RECIPE_H

#include <stddef.h>
#include <sys/types.h>

/* What "hpccont slurm prepare" printed: NUL-terminated fields, each a one-byte tag and its
 * payload (the tags are listed in hpccont/runtime/recipe.py, TAGS).  The Slurm tasks
 * (stepd_side.c) and the exec fast path (launcher/fast.c) both apply them. */
struct recipe {
	char *data;            /* the bytes as read; every pointer below points into it */
	size_t len;
	const char *mode;      /* m */
	pid_t keeper;          /* p */
	const char *start;     /* t */
	const char *host_cwd;  /* h */
	const char *cwd;       /* w */
	const char *lock;      /* L (optional): lock file held while entering (runtime/join.py) */
	const char *guests;    /* G (optional): guests file, held shared through the exec */
	int keep_only;         /* K */
	int exact;             /* x: prefix and environment are final (the shell rules applied) */
	char **prefix;         /* a... (NULL-terminated, each list below too) */
	char **keep;           /* k... */
	char **unset;          /* u... */
	char **unset_prefix;   /* U... */
	char **set;            /* s... NAME=VALUE */
	char **copy;           /* c... */
	char **files;          /* f... */
	const char *build;     /* B "UID GID": a cold recipe, no keeper (launcher/cold.c builds) */
};

/* Takes ownership of data (malloc'd).  0 on success; -1 on a malformed recipe (freed). */
int recipe_parse(struct recipe *r, char *data, size_t len);

/* Was the recipe's exec part made for a command like argv (its 'W' field)? */
int recipe_fits(const struct recipe *r, char **argv);

/* The first field with this tag, or NULL. */
const char *recipe_field(const struct recipe *r, char tag);

/* /proc/PID/stat's start time (field 22), as join.start_time gives it; 0, or -1. */
int recipe_start_time(pid_t pid, char *out, size_t size);

/* Is the keeper the process that prepare started (alive, same start time, same uid)? */
int recipe_keeper_alive(const struct recipe *r, uid_t uid);

/* The task's environment turned into the container's (the rules of environment.apply_delta). */
char **recipe_environment(const struct recipe *r, char **task_env, char **argv);

/* Enter the container and exec argv.  Returns (with errno kept) only when nothing has changed
 * yet, so the caller can take the Python path; after the first namespace switch it never
 * returns: it execs or _exits. */
void recipe_exec(const struct recipe *r, char **argv, char **task_env);

/* Inside the container: change to its working directory and exec argv (after the recipe's
 * prefix) in env, the environment recipe_environment made.  Never returns. */
void recipe_run(const struct recipe *r, char **argv, char **env);

#endif
