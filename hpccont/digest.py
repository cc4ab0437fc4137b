"""sha256 of short texts (state-file names, share keys) without loading OpenSSL.

``import hashlib`` loads OpenSSL's libcrypto through _hashlib: 4-8 ms measured per process, paid
by every Slurm prepare and every launch that names a keeper's state file.  CPython's own
sha256 (``_sha256``, ``_sha2`` from 3.12) imports in a fraction of a millisecond and gives the
same digest; it is slower than OpenSSL on large data, so file and blob digests keep hashlib.
"""


def _constructor():
    for name in ("_sha2", "_sha256"):
        try:
            return __import__(name).sha256
        except ImportError:
            continue
    import hashlib     # a build without the builtin modules
    return hashlib.sha256


def text_sha256(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8 (surrogates as the bytes they stand for)."""
    return _constructor()(text.encode("utf-8", "surrogateescape")).hexdigest()
