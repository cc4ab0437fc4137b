"""``image-update``: refresh a user's own copy of a module's image from the site's central one.

The copy lives in ``$HPCCONT_IMAGE_CACHE`` (default ``~/.local/share/hpccont/images``) under a
name unique to the module; the modulefile prefers it over the central image once it exists.
An update is copied to a temporary file next to the copy, its sha256 checked against the
central image's (and against a published ``IMAGE.sha256`` file when the site ships one), its
signature verified when hpccont has a verifier and the image is signed or the site requires
signatures, and only then renamed over the old copy: a failed or interrupted update leaves the
old copy untouched.
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from ..errors import ImageError, SignatureError
from .metadata import sha256_file

DEFAULT_CACHE = os.path.join(".local", "share", "hpccont", "images")
CHUNK = 4 << 20


@dataclass
class UpdatePlan:
    central: str
    local: str
    action: str                      # "copy" | "up-to-date"
    reason: str
    central_digest: str = ""


def local_copy_path(module: str, copy_name: str, environ: Mapping[str, str]) -> str:
    if environ.get("HPCCONT_MODULE") == module and environ.get("HPCCONT_IMAGE_LOCAL"):
        return environ["HPCCONT_IMAGE_LOCAL"]
    cache = environ.get("HPCCONT_IMAGE_CACHE") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), DEFAULT_CACHE)
    return os.path.join(cache, copy_name)


def resolve_central(central: str, config: Optional[dict]) -> str:
    """The central image; when it moved, the same file name in ``modules.central_image_dir``."""
    if os.path.exists(central) or not config:
        return central
    site_dir = config.get("modules", {}).get("central_image_dir") or ""
    moved = os.path.join(site_dir, os.path.basename(central)) if site_dir else ""
    return moved if moved and os.path.exists(moved) else central


def published_digest(central: str) -> Optional[str]:
    """``IMAGE.sha256`` next to the central image (``sha256sum`` format or a bare hex digest)."""
    try:
        with open(central + ".sha256") as f:
            word = (f.read().split() or [""])[0]
    except OSError:
        return None
    word = word.split(":", 1)[-1].lower()
    if len(word) != 64 or any(c not in "0123456789abcdef" for c in word):
        raise ImageError(f"{central}.sha256 does not hold a sha256 digest")
    return "sha256:" + word


def plan_update(central: str, local: str, force: bool = False) -> UpdatePlan:
    if os.path.isdir(central):
        raise ImageError(f"{central} is a sandbox directory: image-update copies image files only")
    if not os.path.isfile(central):
        raise ImageError(f"central image {central} does not exist")
    cdigest = sha256_file(central)
    expected = published_digest(central)
    if expected and expected != cdigest:
        raise ImageError(f"central image {central} does not match its published digest "
                         f"({cdigest} != {expected}); not copying it")
    if force:
        return UpdatePlan(central, local, "copy", "forced", cdigest)
    if not os.path.exists(local):
        return UpdatePlan(central, local, "copy", "no local copy yet", cdigest)
    if sha256_file(local) == cdigest:
        return UpdatePlan(central, local, "up-to-date", "same digest", cdigest)
    return UpdatePlan(central, local, "copy", "central image changed", cdigest)


def verify_signature(path: str, signed: bool, required: bool,
                     run_verify: Optional[Callable[[str], int]] = None,
                     keyring: bool = True) -> str:
    """'verified', 'unsigned' or 'no keyring'; SignatureError when verification
    fails.  ``keyring``: whether the site names trusted keys; without them a signature cannot be
    checked, which only matters when the site requires one."""
    if not signed and not required:
        return "unsigned"
    if not keyring and not required:
        return "no keyring"
    if run_verify is None:
        run_verify = _verify_with_site_keyring
    if run_verify(path) != 0:
        raise SignatureError(f"signature check of {path} failed; the old copy is kept")
    return "verified"


def _verify_with_site_keyring(path: str) -> int:
    """0 when every signature of ``path`` verifies with the site's keyring (as ``hpccont
    verify``), non-zero otherwise."""
    from ..image.sign import check_signatures
    try:
        results = check_signatures(path)
    except SignatureError:
        return 1
    return 1 if any(isinstance(r, SignatureError) for _, r in results) else 0


def copy_verified(plan: UpdatePlan, *, required_signature: bool = False,
                  run_verify: Optional[Callable[[str], int]] = None,
                  keyring: bool = True) -> str:
    """Copy, check digest and signature, then rename into place.  Returns the signature status."""
    from .metadata import ImageReader
    directory = os.path.dirname(os.path.abspath(plan.local))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot create {directory}: {e.strerror}") from None
    tmp = os.path.join(directory, f".{os.path.basename(plan.local)}.tmp-{os.getpid()}")
    try:
        h = hashlib.sha256()
        with open(plan.central, "rb") as src, open(tmp, "wb") as dst:
            for buf in iter(lambda: src.read(CHUNK), b""):
                h.update(buf)
                dst.write(buf)
        os.chmod(tmp, os.stat(plan.central).st_mode & 0o755)
        # The digest is taken again from what landed on disk: a short or damaged copy shows here.
        got = sha256_file(tmp)
        if got != plan.central_digest or "sha256:" + h.hexdigest() != plan.central_digest:
            raise ImageError(f"copy of {plan.central} has digest {got}, expected "
                             f"{plan.central_digest} (central image changed during the copy?)")
        signed = ImageReader(tmp).signed
        status = verify_signature(tmp, signed, required_signature, run_verify, keyring)
        os.replace(tmp, plan.local)
        return status
    except OSError as e:
        raise ImageError(f"cannot copy {plan.central} to {plan.local}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
