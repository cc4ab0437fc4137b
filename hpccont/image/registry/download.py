"""Blob downloads into the cache: streamed, verified, resumed, retried, in parallel.

Each blob is written to ``tmp/HEX.partial`` while its SHA-256 is computed; it is renamed into
``blob/sha256/HEX`` only when the size and digest match.  A broken connection resumes with
``Range: bytes=N-`` (after a backoff) from what the partial file holds, in this process or in
the next pull; a digest mismatch removes the partial file, so nothing unverified is ever used.
"""
from __future__ import annotations

import errno
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable

from .cache import Cache
from .errors import RegistryError

# The HTTP client (client.py, http.client) is imported by the functions that download: a warm
# pull only makes a Progress (fetch_image), and must not pay http.client's imports for it.

CHUNK = 1 << 20


class Progress:
    """Bytes of all blobs of one pull on one rewritten line, on a terminal only."""

    def __init__(self, total: int, label: str, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.done, self.label = total, 0, label
        self.lock = threading.Lock()
        self.last = 0.0

    def add(self, n: int) -> None:
        if not self.enabled:
            return
        with self.lock:
            self.done += n
            now = time.monotonic()
            if now - self.last >= 0.1 or self.done >= self.total:
                self.last = now
                self.stream.write(f"\r\033[K{self.label}: {_mib(self.done)} / "
                                  f"{_mib(self.total)} MiB")
                self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.last:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def fetch_blob(client, cache: Cache, repo: str, digest: str, size: int | None,
               label: str, progress: Progress | None = None,
               abort: threading.Event | None = None) -> str:
    """The cached path of blob ``digest``, downloading it first if no cache has it."""
    found = cache.find_blob(digest, size)
    if found:
        if progress:
            progress.add(size or 0)
        return found
    cache.ensure()
    with cache.lock(digest.partition(":")[2]):
        found = cache.find_blob(digest, size)     # another process got it meanwhile
        if found:
            if progress:
                progress.add(size or 0)
            return found
        partial = cache.partial_path(digest)
        try:
            _download(client, cache, repo, digest, size, partial, label, progress, abort)
        except RegistryError:
            raise
        except OSError as e:
            _unlink(partial)
            if e.errno == errno.ENOSPC:
                raise RegistryError(f"{label}: no space left on device in {cache.root} "
                                    "(set HPCCONT_CACHEDIR elsewhere or 'hpccont cache clean')") \
                    from None
            raise RegistryError(f"{label}: cannot write to the cache {cache.root}: "
                                f"{e.strerror}") from None
        return cache.commit_blob(partial, digest)


def _download(client, cache: Cache, repo: str, digest: str, size: int | None,
              partial: str, label: str, progress: Progress | None,
              abort: threading.Event | None) -> None:
    import http.client
    from .client import backoff, describe_os_error
    expected = digest.partition(":")[2]
    restarted = False
    failures = 0
    while True:
        h = hashlib.sha256()
        offset = 0
        if os.path.exists(partial):
            with open(partial, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    h.update(chunk)
                    offset += len(chunk)
            if size is not None and offset > size:
                _unlink(partial)
                h, offset = hashlib.sha256(), 0
        resumed = offset > 0
        if progress and offset:
            progress.add(offset)
        complete = size is not None and offset == size
        if not complete:
            try:
                resp = client.open_blob(repo, digest, offset, label=label)
            except RegistryError:
                raise
            if resp is None:                   # 416: the partial file is no prefix
                _unlink(partial)
                continue
            if resp.status == 200 and offset:
                h, offset = hashlib.sha256(), 0    # no Range support: from the start
                resumed = False
                mode = "wb"
            else:
                mode = "ab" if offset else "wb"
            err = None
            with open(partial, mode) as out:
                try:
                    while True:
                        if abort is not None and abort.is_set():
                            client.drop()     # another download failed: this one stops and
                            out.close()       # leaves no partial file (disk full, mismatch),
                            if not getattr(abort, "keep_partial", False):
                                _unlink(partial)      # unless ^C: the next pull resumes it
                            raise RegistryError(f"{label}: cancelled")
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        offset += len(chunk)
                        if progress:
                            progress.add(len(chunk))
                        if size is not None and offset > size:
                            break
                except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
                    err = e
                except OSError as e:
                    if e.errno == errno.ENOSPC or out.closed:
                        raise
                    err = e
            if err is not None or (size is not None and offset < size):
                client.drop()
                failures += 1
                if failures > client.retries:
                    why = describe_os_error(err) if err else "connection closed early"
                    raise RegistryError(f"{label}: download of {digest[:19]} interrupted "
                                        f"({why}) after {failures} attempts; run the pull "
                                        "again to resume")
                time.sleep(backoff(failures - 1))
                continue
        if h.hexdigest() == expected and (size is None or offset == size):
            return
        _unlink(partial)
        if resumed and not restarted:
            restarted = True            # the earlier part may have been bad: once from scratch
            continue
        raise RegistryError(f"{label}: digest mismatch for blob {digest} (got sha256:"
                            f"{h.hexdigest()[:12]}..., {offset} bytes): the registry sent "
                            "different content; nothing was kept")


def fetch_all(jobs: list[tuple[str, int | None]], fetch: Callable[..., str],
              threads: int = 4) -> list[str]:
    """Run ``fetch(digest, size, abort)`` for every job in parallel; paths in job order.
    The first failure stops the others (at their next chunk) and is raised."""
    if len(jobs) <= 1 or threads <= 1:
        return [fetch(d, s, None) for d, s in jobs]
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
    abort = threading.Event()
    pool = ThreadPoolExecutor(max_workers=min(threads, len(jobs)))
    try:
        futures = [pool.submit(fetch, d, s, abort) for d, s in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            if f.done() and f.exception() is not None:
                abort.set()
                raise f.exception()
        return [f.result() for f in futures]
    except BaseException as e:
        abort.keep_partial = isinstance(e, (KeyboardInterrupt, SystemExit))
        abort.set()
        raise
    finally:
        pool.shutdown(wait=True)


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
