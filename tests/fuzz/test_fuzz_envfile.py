"""Fuzzing ``--env-file``: the reader evaluates the file as a shell script with ``set -a`` and
the host's variables visible (runtime/environment.py, on the env-script interpreter).

Inputs: env files damaged with shell syntax spliced in, and raw bytes (not UTF-8, NUL bytes).
Allowed outcomes: variables that can be passed to execve (names of the shell's kind, no NUL
anywhere), or UsageError naming the file, which the launch reports on one line.
"""
import sys
from pathlib import Path

from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzlib import (SHELL_SEEDS, SHELL_TOKENS, MemFile, Outcomes, fuzz_settings,  # noqa: E402
                     kind, mutate_text, outcome)

from hpccont.cli import launch as cli_launch  # noqa: E402
from hpccont.runtime import environment  # noqa: E402

SEEDS = [SHELL_SEEDS[-1], "A=1\nB='two words'\nC=\"$A-$HOST_ONLY\"\nexport D=4\nunset A\n",
         "# site defaults\nOMP_NUM_THREADS=4\nif [ -z \"$SCRATCH\" ]; then SCRATCH=/tmp; fi\n"
         "for d in /a /b; do P=\"$P:$d\"; done\n"]
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def read(path: str, environ: dict):
    env = environment.read_env_file(path, environ, image="/images/x.sif")
    for k, v in env.items():
        assert k and not k[0].isdigit() and set(k) <= NAME_CHARS, k
        assert "\0" not in v, (k, v)
        assert k not in environment.READ_ONLY_VARS
    return "env"


def through_command_line(path: str, environ: dict):
    req = cli_launch.build_request("exec", ["--env-file", path, "--env", "Z=1", "img.sif"],
                                   environ)
    assert req.env.get("Z") == "1"
    return "env"


def test_fuzz_env_files():
    seen = Outcomes()
    f = MemFile("vars.env")
    environ = {"HOME": "/home/u", "HOST_ONLY": "h", "PATH": "/usr/bin:/bin"}

    @fuzz_settings()
    @given(st.binary(min_size=1, max_size=60))
    def one(case):
        choice, tape = case[0] % 8, case[1:]
        if choice == 7:
            f.load(tape)
        else:
            text = mutate_text(SEEDS[choice % len(SEEDS)], tape, SHELL_TOKENS)
            f.load(text.encode("utf-8", "surrogateescape"))
        reader = through_command_line if choice == 6 else read
        seen.add(kind(outcome(reader, f.path, environ)))

    one()
    seen.check_volume()
    assert seen.counts.get("env") and seen.counts.get("UsageError"), seen.counts
    print(f"env files: {seen.total} inputs: {seen.counts}")


def test_nul_byte_in_an_env_file_is_refused(tmp_path):
    """execve cannot pass a NUL inside a value: the file is refused when read, on one line."""
    f = tmp_path / "nul.env"
    f.write_bytes(b"A=x\0y\n")
    result = outcome(read, str(f), {})
    assert kind(result) == "UsageError", result
    assert "nul.env" in str(result)


def test_carriage_returns_stay_in_values(tmp_path):
    f = tmp_path / "crlf.env"
    f.write_bytes(b"A=1\r\n")
    assert environment.read_env_file(str(f), {}) == {"A": "1\r"}
