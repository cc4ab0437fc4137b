"""Writing what ``hpccont pull`` fetched to OUT: whole or not at all.

The cached SIF is copied (never linked: ``hpccont sign`` changes a SIF in place and must not
change the cache) to a hidden sibling of OUT, which is renamed over OUT once complete.  A
failed or interrupted pull leaves no OUT and no partial file.
"""
from __future__ import annotations

import errno
import os

from .errors import RegistryError


def check_out(out: str, force: bool) -> None:
    if os.path.lexists(out) and not force:
        raise RegistryError(f"{out}: already exists (use --force to overwrite)")
    if os.path.isdir(out):
        raise RegistryError(f"{out}: is a directory")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise RegistryError(f"{out}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RegistryError(f"{out}: cannot write in {parent} (permission denied)")


def partial_path(out: str) -> str:
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial-{os.getpid()}")


def _publish(partial: str, out: str) -> None:
    """Mode 0755 less the umask (like Apptainer's pulls), then renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o755 & ~umask)
    os.replace(partial, out)


def copy_file(src: str, dst: str) -> None:
    """``src`` to a new file ``dst``, copied by the kernel (copy_file_range: a reflink where the
    filesystem has them, an in-kernel copy otherwise; read/write across filesystems that
    refuse it).  Without shutil, which imports the compression modules for its archives."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or done:
                raise
            while True:                  # where the kernel refuses: a plain copy
                chunk = fin.read(1 << 20)
                if not chunk:
                    break
                fout.write(chunk)


class EarlyCopy:
    """The SIF a warm pull most likely gets (pull.cached_guess) copied to OUT's partial file in a
    thread while the registry confirms the tag: the copy (the kernel's, the GIL released) and
    the network overlap.  Kept only if the pull's answer is that very file."""

    def __init__(self, src: str, partial: str):
        import threading
        self.src, self.partial, self.error = src, partial, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            copy_file(self.src, self.partial)
        except BaseException as e:     # reported by take(): the normal copy then runs
            self.error = e

    def take(self, src: str) -> bool:
        self.thread.join()
        if self.error is None and src == self.src:
            return True
        _unlink(self.partial)
        return False

    def drop(self) -> None:
        self.thread.join()
        _unlink(self.partial)


def place(src: str, out: str, early: EarlyCopy | None = None) -> None:
    """Copy ``src`` to ``out`` atomically (mode 0755 less the umask, like Apptainer's pulls)."""
    partial = partial_path(out)
    try:
        if early is None or not early.take(src):
            copy_file(src, partial)
        _publish(partial, out)
    except BaseException as e:
        _unlink(partial)
        if isinstance(e, OSError):
            raise RegistryError(f"{out}: cannot write: {e.strerror}") from None
        raise


def pull(uri: str, out: str, *, arch: str | None = None, nohttps: bool = False,
         quiet: bool = False, disable_cache: bool = False, tmpdir: str | None = None,
         environ=os.environ) -> None:
    if uri.startswith(("https://", "http://")):
        return download_url(uri, out, quiet=quiet, environ=environ)
    from . import pull as pullmod
    from .cache import Cache
    if not disable_cache:
        guess = pullmod.cached_guess(uri, arch, environ)
        early = EarlyCopy(guess, partial_path(out)) if guess else None
        try:
            src = pullmod.pull_to_cache(uri, arch=arch, nohttps=nohttps, quiet=quiet,
                                        tmpdir=tmpdir, environ=environ)
        except BaseException:
            if early is not None:
                early.drop()
            raise
        return place(src, out, early)
    import shutil
    import tempfile
    work = tempfile.mkdtemp(prefix=".hpccont-pull-", dir=tmpdir or os.path.dirname(out))
    try:
        cache = Cache(os.path.join(work, "cache"))
        cache.private = True
        from . import reference
        ref = reference.parse(uri)
        if ref.scheme == "oras":
            from . import oras
            pullmod.check_allowed(ref, pullmod.registry_config(environ))
            src = oras.pull_to_cache(ref, nohttps=nohttps, quiet=quiet, cache=cache,
                                     environ=environ)
        else:
            fetched = pullmod.fetch_image(ref, arch=arch, nohttps=nohttps, quiet=quiet,
                                          cache=cache, environ=environ)
            src = pullmod.convert(fetched, cache, quiet=quiet, tmpdir=tmpdir, environ=environ)
        place(src, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download_url(url: str, out: str, *, quiet: bool = False, environ=os.environ) -> None:
    """A SIF (or squashfs) file by URL: streamed, resumed with Range, retried."""
    import http.client
    from ..sif import is_sif
    from ..source import SQUASHFS_MAGIC
    import time
    import urllib.parse
    from .client import Client, Reply, backoff, describe_os_error
    from .download import Progress
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise RegistryError(f"{url}: no host in the URL")
    client = Client(parts.netloc, nohttps=parts.scheme == "http", creds=None, environ=environ)
    partial = partial_path(out)
    failures = 0
    total = None
    progress = None
    try:
        while True:
            have = os.path.getsize(partial) if os.path.exists(partial) else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            resp = client.request("GET", url, headers=headers, stream=True, what=url)
            if isinstance(resp, Reply):
                if resp.status == 416 and have and have == total:
                    break
                raise RegistryError(f"{url}: HTTP {resp.status}"
                                    + (" (not found)" if resp.status == 404 else ""))
            if resp.status == 200:
                have = 0
                length = resp.getheader("Content-Length")
                total = int(length) if length and length.isdigit() else None
            elif total is None:
                rng = resp.getheader("Content-Range", "")
                if "/" in rng and rng.rsplit("/", 1)[1].isdigit():
                    total = int(rng.rsplit("/", 1)[1])
            if progress is None:
                progress = Progress(total or 0, f"downloading {os.path.basename(out)}",
                                    quiet=quiet)
            err = None
            with open(partial, "ab" if have else "wb") as f:
                try:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        f.write(chunk)
                        have += len(chunk)
                        progress.add(len(chunk))
                except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
                    err = e
            if err is None and (total is None or have >= total):
                break
            client.drop()
            failures += 1
            if failures > client.retries:
                why = describe_os_error(err) if err else "connection closed early"
                raise RegistryError(f"{url}: download interrupted ({why})")
            time.sleep(backoff(failures - 1))
        if progress:
            progress.finish()
        with open(partial, "rb") as f:
            head = f.read(64)
        if not is_sif(head) and head[:4] != SQUASHFS_MAGIC:
            raise RegistryError(f"{url}: the download is not a SIF or squashfs image")
        _publish(partial, out)
    except BaseException as e:
        _unlink(partial)
        if isinstance(e, OSError):
            raise RegistryError(f"{out}: cannot write: {e.strerror}") from None
        raise
    finally:
        client.close()


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
