"""What every fuzz target shares: the example count, the one allowed failure, a per-input time
limit, and mutation "tapes".

A tape is a short byte string hypothesis draws (and shrinks) that says how to damage a valid
seed: which integer field to set to which awkward value, which bytes to overwrite, insert, cut
or copy.  Drawing one binary and decoding it here costs a fraction of what drawing a structured
list of edits costs hypothesis, which is what lets each target try 10,000 inputs in seconds.

EXAMPLES inputs per target (10,000 by default; the long run:
``HPCCONT_FUZZ_EXAMPLES=200000 pytest tests/fuzz``).
"""
import os
import signal
import struct

from hypothesis import HealthCheck, settings

from hpccont.errors import HpccontError

EXAMPLES = int(os.environ.get("HPCCONT_FUZZ_EXAMPLES", "10000"))
# One input may take this long (seconds) before it counts as a hang.
INPUT_LIMIT = float(os.environ.get("HPCCONT_FUZZ_INPUT_LIMIT", "5"))


def fuzz_settings(examples: int = EXAMPLES):
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


class Hang(BaseException):
    """One input ran past INPUT_LIMIT.  A BaseException so that no ``except Exception`` in the
    code under test swallows it."""


def _alarm(signum, frame):
    raise Hang(f"input still running after {INPUT_LIMIT} s")


class Outcomes:
    """Counts what the inputs did: 'ok' or the name of the project's error class."""

    def __init__(self):
        self.counts: dict = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def check_volume(self, examples: int = EXAMPLES) -> None:
        # hypothesis stops early only when it has exhausted the input space
        assert self.total >= examples * 0.9, self.counts


def outcome(fn, *args, allowed=(HpccontError,)):
    """Run ``fn(*args)`` under the time limit: its result, or the allowed error it raised (with
    a non-empty one-line message).  Anything else propagates, and hypothesis reports the input."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, INPUT_LIMIT)
    try:
        return fn(*args)
    except allowed as e:
        if isinstance(e, HpccontError):
            assert e.one_line(), f"{type(e).__name__} without a message"
        return e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def kind(result) -> str:
    """The error's class name, the target's own word for a success, or "ok"."""
    if isinstance(result, BaseException):
        return type(result).__name__
    return result if isinstance(result, str) else "ok"


# ---------------------------------------------------------------------------------- mutation
def awkward_ints(size: int) -> list:
    """Values that break offset and size arithmetic, some relative to the input's length."""
    return [0, 1, -1, 2, 127, 128, 255, 4095, 4096, 32176, 1 << 16, (1 << 16) + 1, 1 << 31,
            (1 << 31) - 1, -(1 << 31), 1 << 32, (1 << 63) - 1, -(1 << 63), size, size - 1,
            size + 1, size // 2, -size]


def put_int(buf: bytearray, offset: int, fmt: str, value: int) -> None:
    width = struct.calcsize(fmt)
    bits = width * 8
    signed = fmt[-1].islower()
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    value = value % (1 << bits)
    if signed and value > hi:
        value -= 1 << bits
    assert lo <= value <= hi
    if offset + width <= len(buf):
        struct.pack_into(fmt, buf, offset, value)


def mutate(seed: bytes, tape: bytes, fields=()) -> bytes:
    """``seed`` damaged as ``tape`` says.  ``fields``: (offset, struct format) of the seed's
    integer fields (little-endian), targeted by the structure-aware edits."""
    buf = bytearray(seed)
    i = 0
    while i + 4 <= len(tape):
        op, a, b, c = tape[i], tape[i + 1], tape[i + 2], tape[i + 3]
        i += 4
        pos = (a << 8 | b) % (len(buf) + 1)
        op %= 9
        if op in (0, 1) and fields:
            off, fmt = fields[(a << 8 | b) % len(fields)]
            if off + struct.calcsize(fmt) > len(buf):
                continue
            if op == 0:
                values = awkward_ints(len(buf))
                put_int(buf, off, fmt, values[c % len(values)])
            else:          # a small step from the current value
                (now,) = struct.unpack_from(fmt, buf, off)
                put_int(buf, off, fmt, now + (c - 128))
        elif op == 2 and buf:
            buf[pos % len(buf)] = c
        elif op == 3:
            buf[pos:pos] = bytes([c]) * (1 + c % 7)
        elif op == 4:
            del buf[pos:pos + 1 + c * 4]
        elif op == 5:
            del buf[pos:]
        elif op == 6 and buf:     # copy a chunk elsewhere: duplicated records, overlaps
            src = (c * 97) % len(buf)
            chunk = bytes(buf[src:src + 1 + c])
            buf[pos:pos + len(chunk)] = chunk
        elif op == 7 and buf:
            buf[pos % len(buf)] ^= 1 << (c % 8)
        elif op == 8:
            buf[pos:pos] = tape[i:i + 1 + c % 16]
    return bytes(buf)


def mutate_text(seed: str, tape: bytes, tokens) -> str:
    """``seed`` with lines dropped, doubled or swapped and ``tokens`` spliced in, as ``tape``
    says: near-valid text that still looks like the format."""
    lines = seed.split("\n")
    i = 0
    while i + 3 <= len(tape):
        op, a, b = tape[i] % 7, tape[i + 1], tape[i + 2]
        i += 3
        n = len(lines)
        line = a % n if n else 0
        if op == 0 and n:
            del lines[line]
        elif op == 1 and n:
            lines.insert(line, lines[b % n])
        elif op == 2 and n:
            j = b % n
            lines[line], lines[j] = lines[j], lines[line]
        elif op in (3, 4) and n:      # a token inside a line, or as a line of its own
            text = lines[line]
            at = b % (len(text) + 1)
            token = tokens[(a * 31 + b) % len(tokens)]
            lines[line] = text[:at] + token + text[at:] if op == 3 else lines[line]
            if op == 4:
                lines.insert(line, token)
        elif op == 5 and n:
            text = lines[line]
            at = b % (len(text) + 1)
            lines[line] = text[:at]
        else:
            lines.insert(line, tape[i:i + 1 + b % 12].decode("latin-1"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- shell text
# The shell syntax environment scripts and env files use, and what the interpreter must refuse.
SHELL_TOKENS = ["$", "$X", "${X}", "${X:-d}", "${X-d}", "${X:+s}", "${X:=v}", "${X#p}", "${",
                "${X", "}", "${1}", "$1", "$@", "$*", "$?", "$$", "$(", "$((1))", "`", "'", '"',
                "\\", "\\\n", ";", ";;", "&&", "||", "|", "&", "(", ")", "<", ">", "<<", "<<EOF",
                "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "case",
                "esac", "{", "function", "!", "export", "export -p", "unset", "unset -f", ".",
                ". ./x", "[", "]", "test", "-z", "-n", "-e", "-d", "-f", "=", "!=", "-eq", "-lt",
                "true", "false", ":", "echo", "exit", "*", "?", "[a-z]", "~", "~/x", "#", "\n",
                " ", "\t", "A=1", "PATH=/bin", "IFS=:", "HOME=/x", "X=", "0X=1", "é", "\r",
                "$D/*.sh", "$D/*", "/*"]
SHELL_SEEDS = [
    '#!/bin/sh\nif [ -z "${LD_LIBRARY_PATH:-}" ]; then\n    LD_LIBRARY_PATH=/.singularity.d/libs\n'
    'else\n    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\nPS1="Apptainer> "\n'
    'export LD_LIBRARY_PATH PS1\n',
    '#!/bin/sh\nif [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then\n'
    '    PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"\nfi\nunset SING_USER_DEFINED_PATH\n'
    'export PATH\n',
    '#!/bin/sh\nexport A="quote \\" and \\\\ backslash" B=\'single\' C=${HOME}/bin\n'
    'export PATH="/opt/app/bin:$PATH"\nX=1; Y=${X:+set}; export X Y\n',
    '#!/bin/sh\nfor f in "$D"/*.sh; do\n  if [ -f "$f" ]; then . "$f"; fi\ndone\n'
    'if [ "$A" = "1" ] && [ "$B" != x ] || [ 1 -lt 2 ]; then Z=yes; fi\nexport Z\n',
    'A=1\nexport B=2\nC="x y"\nif [ -n "$HOME" ]; then D=$HOME; else D=none; fi\n# comment\n'
    'E=${UNSET:-default}\n',
]


class MemFile:
    """One input as a real file without a disk write: a memfd, opened through its
    /proc/self/fd/N path by the code under test (open, stat and read work as on any file)."""

    def __init__(self, name: str = "fuzz-input"):
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"

    def load(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
