/*
 * fusecache.so: lets the kernel cache what an image's FUSE server serves.
 *
 * Why: an image is immutable, yet squashfuse (0.1.105 in Debian 12, and upstream to this day)
 * negotiates none of the caching the kernel offers a read-only filesystem.  Every open(2) is
 * an OPEN and a RELEASE round trip, every readlink(2) a READLINK, every listing of a directory
 * OPENDIR + READDIR + RELEASEDIR, even when the data sit in the page cache.  A Python
 * interpreter makes ~3,500 of them at start-up; 32 interpreters on a node share one server.
 *
 * This object is preloaded into the server (LD_PRELOAD, set by the launcher only for the
 * server it starts).  It wraps the operation table the server hands to libfuse's
 * fuse_session_new() and, where the kernel says it can:
 *   - FUSE_CAP_NO_OPEN_SUPPORT / FUSE_CAP_NO_OPENDIR_SUPPORT: the first OPEN (OPENDIR) is
 *     answered ENOSYS, which the kernel takes as "opens need no round trip" for the rest of
 *     the mount; it then keeps the page cache across opens (FOPEN_KEEP_CACHE) and caches
 *     directory listings (FOPEN_CACHE_DIR), its defaults for a filesystem without opens.
 *     READ and READDIR then arrive without a file handle: we open the inode once through the
 *     server's own open/opendir, keep that handle, and give it back when the kernel forgets
 *     the inode.
 *   - FUSE_CAP_CACHE_SYMLINKS: link targets stay in the page cache.
 *   - where no-opendir is not offered, opendir still asks for cache_readdir + keep_cache.
 * Nothing here interprets the image: the server still does every lookup, read and listing,
 * and a server built without these symbols simply runs unwrapped.  With no opens, nothing
 * reaches the server to refuse an open for writing: the runtime mounts images read-only
 * (MS_RDONLY), so the kernel refuses it first (EROFS).
 *
 * Built against libfuse 3.14's headers (Debian 12; RHEL 9 has 3.10, and every 3.x keeps these
 * structures' layout).  libfuse 3.17 renamed the entry point a server links against
 * (_fuse_session_new_317): there nothing is wrapped and the server runs as it would alone.
 *
 * inflate.c, linked into the same object, decodes the server's gzip blocks with libdeflate.
 *
 * The server's handlers answer synchronously (squashfuse's do); to take a handle from its
 * open without answering the kernel, fuse_reply_open/fuse_reply_err are interposed and, while
 * `capture` is armed on this thread, record the answer instead of sending it.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fuse_lowlevel.h>

#define VERSION "FUSE_3.0"      /* the symbol version squashfuse links against */

typedef struct fuse_session *(*session_new_fn)(struct fuse_args *,
		const struct fuse_lowlevel_ops *, size_t, void *);
typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);
typedef int (*reply_err_fn)(fuse_req_t, int);

static struct fuse_lowlevel_ops server;  /* the server's own handlers */
static int no_open, no_opendir;          /* what the kernel offered at FUSE_INIT */

static void *real(const char *name)
{
	void *fn = dlvsym(RTLD_NEXT, name, VERSION);
	return fn ? fn : dlsym(RTLD_NEXT, name);
}

/* ---- capturing an answer instead of sending it ---- */

static __thread struct capture {
	int armed, err;
	uint64_t fh;
} capture;

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
	static reply_open_fn send;

	if (capture.armed) {
		capture.armed = 0;
		capture.err = 0;
		capture.fh = fi->fh;
		return 0;
	}
	if (!send)
		send = (reply_open_fn)real("fuse_reply_open");
	return send(req, fi);
}

int fuse_reply_err(fuse_req_t req, int err)
{
	static reply_err_fn send;

	if (capture.armed) {
		capture.armed = 0;
		capture.err = err ? err : EIO;
		return 0;
	}
	if (!send)
		send = (reply_err_fn)real("fuse_reply_err");
	return send(req, err);
}

/* Call the server's open (or opendir) for `ino` and keep the answer to ourselves. */
static int open_quietly(fuse_req_t req, fuse_ino_t ino, int dir, uint64_t *fh)
{
	struct fuse_file_info fi;

	memset(&fi, 0, sizeof(fi));
	fi.flags = O_RDONLY | (dir ? O_DIRECTORY : 0);
	capture.armed = 1;
	capture.err = EIO;      /* a handler that answers nothing failed */
	(dir ? server.opendir : server.open)(req, ino, &fi);
	if (capture.armed) {
		capture.armed = 0;
		return EIO;
	}
	*fh = capture.fh;
	return capture.err;
}

static void release_quietly(fuse_req_t req, fuse_ino_t ino, int dir, uint64_t fh)
{
	struct fuse_file_info fi;
	void (*release)(fuse_req_t, fuse_ino_t, struct fuse_file_info *) =
		dir ? server.releasedir : server.release;

	if (!release)
		return;
	memset(&fi, 0, sizeof(fi));
	fi.fh = fh;
	capture.armed = 1;
	release(req, ino, &fi);
	capture.armed = 0;
}

/* ---- inode -> handle, per kind; open addressing, grown at half full ---- */

struct slot {
	fuse_ino_t ino;         /* 0: empty (FUSE never uses inode 0) */
	uint64_t fh;
};

static struct table {
	struct slot *slots;
	size_t size, used;
} tables[2];                    /* [0] files, [1] directories */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct slot *find(struct table *t, fuse_ino_t ino)
{
	size_t i;

	if (!t->size)
		return NULL;
	for (i = (ino * 0x9E3779B97F4A7C15ull) & (t->size - 1); t->slots[i].ino;
	     i = (i + 1) & (t->size - 1))
		if (t->slots[i].ino == ino)
			return &t->slots[i];
	return &t->slots[i];    /* the empty slot where it would go */
}

static int grow(struct table *t)
{
	struct table bigger = {calloc(t->size ? t->size * 2 : 1024, sizeof(struct slot)),
			       t->size ? t->size * 2 : 1024, 0};
	size_t i;

	if (!bigger.slots)
		return -1;
	for (i = 0; i < t->size; i++)
		if (t->slots[i].ino) {
			*find(&bigger, t->slots[i].ino) = t->slots[i];
			bigger.used++;
		}
	free(t->slots);
	*t = bigger;
	return 0;
}

/* Our handle for `ino`, opening it through the server the first time. */
static int handle(fuse_req_t req, fuse_ino_t ino, int dir, uint64_t *fh)
{
	struct table *t = &tables[dir];
	struct slot *s;
	int err = 0;

	pthread_mutex_lock(&lock);
	s = find(t, ino);
	if (s && s->ino) {
		*fh = s->fh;
	} else if ((t->used + 1) * 2 > t->size && grow(t)) {
		err = ENOMEM;
	} else if (!(err = open_quietly(req, ino, dir, fh))) {
		s = find(t, ino);
		s->ino = ino;
		s->fh = *fh;
		t->used++;
	}
	pthread_mutex_unlock(&lock);
	return err;
}

/* The kernel forgot `ino`: give the server its handles back (backward-shift deletion). */
static void drop(fuse_req_t req, fuse_ino_t ino)
{
	int dir;

	pthread_mutex_lock(&lock);
	for (dir = 0; dir < 2; dir++) {
		struct table *t = &tables[dir];
		struct slot *s = find(t, ino);
		size_t i, j;

		if (!s || !s->ino)
			continue;
		release_quietly(req, ino, dir, s->fh);
		i = (size_t)(s - t->slots);
		t->slots[i].ino = 0;
		t->used--;
		for (j = (i + 1) & (t->size - 1); t->slots[j].ino; j = (j + 1) & (t->size - 1)) {
			struct slot moved = t->slots[j];

			t->slots[j].ino = 0;
			*find(t, moved.ino) = moved;
		}
	}
	pthread_mutex_unlock(&lock);
}

/* ---- the wrapped handlers ---- */

static void on_init(void *userdata, struct fuse_conn_info *conn)
{
	if (server.init)
		server.init(userdata, conn);
	no_open = !!(conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) && server.open && server.read;
	no_opendir = !!(conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) && server.opendir &&
		     server.readdir;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
}

static void on_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (no_open && (fi->flags & O_ACCMODE) == O_RDONLY) {
		fuse_reply_err(req, ENOSYS);    /* "no opens": the kernel remembers it */
		return;
	}
	fi->keep_cache = 1;
	server.open(req, ino, fi);
}

/* The handle READ or READDIR needs: the kernel's, or (no opens) ours for the inode; NULL
 * once an error is answered. */
static struct fuse_file_info *with_handle(fuse_req_t req, fuse_ino_t ino, int dir,
					  struct fuse_file_info *fi, struct fuse_file_info *ours)
{
	int err;

	if (fi->fh || !(dir ? no_opendir : no_open))
		return fi;
	*ours = *fi;
	if ((err = handle(req, ino, dir, &ours->fh))) {
		fuse_reply_err(req, err);
		return NULL;
	}
	return ours;
}

static void on_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fuse_file_info ours;

	if ((fi = with_handle(req, ino, 0, fi, &ours)))
		server.read(req, ino, size, off, fi);
}

static void on_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (no_opendir) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	server.opendir(req, ino, fi);
}

static void on_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct fuse_file_info ours;

	if ((fi = with_handle(req, ino, 1, fi, &ours)))
		server.readdir(req, ino, size, off, fi);
}

static void on_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	drop(req, ino);
	if (server.forget)
		server.forget(req, ino, nlookup);
	else
		fuse_reply_none(req);
}

static void on_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	size_t i;

	for (i = 0; i < count; i++)
		drop(req, forgets[i].ino);
	server.forget_multi(req, count, forgets);
}

struct fuse_session *fuse_session_new(struct fuse_args *args,
				      const struct fuse_lowlevel_ops *op, size_t op_size,
				      void *userdata)
{
	static struct fuse_lowlevel_ops wrapped;
	session_new_fn create = (session_new_fn)real("fuse_session_new");

	if (!create)
		return NULL;
	/* A table from a newer libfuse than ours: pass it through untouched. */
	if (op_size > sizeof(server))
		return create(args, op, op_size, userdata);
	memcpy(&server, op, op_size);
	wrapped = server;
	wrapped.init = on_init;
	if (server.open && server.read) {
		wrapped.open = on_open;
		wrapped.read = on_read;
	}
	if (server.opendir && server.readdir) {
		wrapped.opendir = on_opendir;
		wrapped.readdir = on_readdir;
	}
	/* Without the server's own forget_multi, libfuse splits a batch into single forgets
	 * (on_forget), each with a request of its own to answer. */
	wrapped.forget = on_forget;
	if (server.forget_multi)
		wrapped.forget_multi = on_forget_multi;
	return create(args, &wrapped, sizeof(wrapped), userdata);
}
