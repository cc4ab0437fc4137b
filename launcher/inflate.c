/*
 * inflate.c: zlib's uncompress() for the image server, decoded by libdeflate where the node
 * has it.
 *
 * Why: gzip is Apptainer's default compression, so most SIF files a site holds are gzip
 * squashfs.  squashfuse decompresses each block (128 KiB by default) with zlib's one-shot
 * uncompress(), and a fresh mount decompresses every block the command and its libraries
 * need: on every node of every step, and in every launch that does not join a shared mount.
 * libdeflate decodes the same whole-buffer DEFLATE streams 2-3x faster than zlib (busybox's
 * 16 blocks, docs/performance.md).  zstd, xz, lzo and lz4 images never come here.
 *
 * Linked into hpccont-fusecache.so, which the launcher preloads into squashfuse_ll only, so
 * the server's calls to uncompress() resolve here before they reach libz.  libdeflate is
 * opened at the first call by its soname (libdeflate0 in Debian, libdeflate in EL); a node
 * without it keeps zlib, silently.  Its three functions are declared here rather than taken
 * from libdeflate.h, so that the object builds where only libfuse3's headers are installed;
 * their signatures are those of libdeflate.so.0, unchanged since libdeflate 1.0.
 *
 * Whatever libdeflate does not decode (a corrupt block, a buffer too small, a stream zlib
 * reads and libdeflate would not) goes to zlib's own uncompress(), and so does every call
 * when libdeflate is absent: the server sees zlib's results and zlib's errors, only sooner.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

/* zlib's prototype (uLongf is unsigned long, Bytef unsigned char); Z_OK is 0 */
typedef int (*uncompress_fn)(unsigned char *, unsigned long *, const unsigned char *,
		unsigned long);

/* libdeflate.so.0's: LIBDEFLATE_SUCCESS is 0 */
struct libdeflate_decompressor;
typedef struct libdeflate_decompressor *(*alloc_fn)(void);
typedef void (*free_fn)(struct libdeflate_decompressor *);
typedef int (*zlib_decompress_fn)(struct libdeflate_decompressor *, const void *, size_t,
		void *, size_t, size_t *);

static struct {
	alloc_fn alloc;
	free_fn release;
	zlib_decompress_fn decode;
	pthread_key_t key;   /* each server thread's decompressor (libdeflate's are not shared) */
} deflate;

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void free_decompressor(void *d)
{
	deflate.release(d);
}

static void open_libdeflate(void)
{
	void *lib = dlopen("libdeflate.so.0", RTLD_NOW | RTLD_LOCAL);

	if (!lib)
		return;
	deflate.alloc = (alloc_fn)dlsym(lib, "libdeflate_alloc_decompressor");
	deflate.release = (free_fn)dlsym(lib, "libdeflate_free_decompressor");
	deflate.decode = (zlib_decompress_fn)dlsym(lib, "libdeflate_zlib_decompress");
	if (!deflate.alloc || !deflate.release || !deflate.decode ||
	    pthread_key_create(&deflate.key, free_decompressor) != 0)
		deflate.decode = NULL;
}

/* This thread's decompressor, made at its first block; NULL: use zlib. */
static struct libdeflate_decompressor *decompressor(void)
{
	struct libdeflate_decompressor *d;

	pthread_once(&once, open_libdeflate);
	if (!deflate.decode)
		return NULL;
	d = pthread_getspecific(deflate.key);
	if (!d && (d = deflate.alloc()) != NULL && pthread_setspecific(deflate.key, d) != 0) {
		deflate.release(d);
		d = NULL;
	}
	return d;
}

int uncompress(unsigned char *dest, unsigned long *destLen, const unsigned char *source,
	       unsigned long sourceLen)
{
	static uncompress_fn zlib;
	struct libdeflate_decompressor *d = decompressor();
	size_t out;

	if (d && deflate.decode(d, source, sourceLen, dest, *destLen, &out) == 0) {
		*destLen = out;
		return 0;
	}
	if (!zlib)
		zlib = (uncompress_fn)dlsym(RTLD_NEXT, "uncompress");
	if (!zlib)
		return -2;      /* Z_STREAM_ERROR: not reached, the server links libz */
	return zlib(dest, destLen, source, sourceLen);
}
