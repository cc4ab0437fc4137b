"""Fuzzing the env-script interpreter (hpccont/runtime/envscripts.py), which evaluates an
image's /.singularity.d/env/*.sh at every launch without a shell.

Inputs: the layout's scripts and typical image scripts damaged with shell syntax spliced in
(expansions, quotes, operators, keywords, redirections, globs, nested sourcing), and raw text.
Allowed outcomes: an environment, or Unsupported, which makes the launch run the scripts with
/bin/sh instead (the interpreter's contract: it never guesses).  Nothing else, and no hang.
A sample of the scripts it evaluated is then run by dash, in one process, and must give the
same environment (tests/runtime/test_envscripts.py holds the hand-written comparisons).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzlib import (SHELL_SEEDS, SHELL_TOKENS, MemFile, Outcomes, fuzz_settings,  # noqa: E402
                     kind, mutate_text, outcome)

from hpccont.runtime import envscripts  # noqa: E402
from hpccont.runtime.envscripts import Unsupported  # noqa: E402

SHELL_OWN = ("PWD", "SHLVL", "OLDPWD", "_")
# evaluated scripts re-run by dash (one process; the long run compares more)
COMPARED = int(os.environ.get("HPCCONT_FUZZ_COMPARED", "300"))


@pytest.fixture(scope="module")
def scripts_dir(tmp_path_factory):
    """$D: scripts the fuzzed ones source and glob, and a name that makes patterns work."""
    d = tmp_path_factory.mktemp("envd")
    (d / "10-a.sh").write_text("A=1\nexport A\n")
    (d / "20-b.sh").write_text('export B="${A:-none}-b"\n')
    (d / "x").write_text("X2=from-x\n")
    (d / ("long" + "a" * 200 + ".sh")).write_text("L=1\n")
    return d


def evaluate(path: str, environ: dict):
    env = envscripts.evaluate([path], dict(environ))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    return env


def test_fuzz_env_scripts(tmp_path, scripts_dir):
    seen = Outcomes()
    script = MemFile("fuzz.sh")
    environ = {"D": str(scripts_dir), "HOME": "/home/u", "PATH": "/usr/bin:/bin",
               "X": "a b", "EMPTY": "", "LD_LIBRARY_PATH": "/opt/lib"}
    evaluated = []

    @fuzz_settings()
    @given(st.binary(min_size=1, max_size=60))
    def one(case):
        choice, tape = case[0] % 8, case[1:]
        if choice == 7:
            text = tape.decode("utf-8", "surrogateescape")
        else:
            text = mutate_text(SHELL_SEEDS[choice % len(SHELL_SEEDS)], tape, SHELL_TOKENS)
        script.load(text.encode("utf-8", "surrogateescape"))
        result = outcome(evaluate, script.path, environ, allowed=(Unsupported,))
        seen.add(kind(result))
        if isinstance(result, dict) and len(evaluated) < COMPARED and "\0" not in text:
            evaluated.append((text, result))

    one()
    seen.check_volume()
    assert seen.counts.get("ok") and seen.counts.get("Unsupported"), seen.counts
    print(f"env scripts: {seen.total} inputs: {seen.counts}")
    same_as_dash(tmp_path, evaluated, environ)


def same_as_dash(tmp_path, evaluated: list, environ: dict) -> None:
    """Each evaluated script sourced by dash in a subshell of one dash process."""
    if not os.path.exists("/bin/dash"):
        return
    body = []
    for n, (text, _) in enumerate(evaluated):
        p = tmp_path / f"cmp-{n}.sh"
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        body.append(f'( . "{p}"; exec /usr/bin/env -0 ); printf "\\001"')
    batch = tmp_path / "compare.sh"
    batch.write_text("\n".join(body) + "\n")
    r = subprocess.run(["/bin/dash", str(batch)], env=environ, capture_output=True,
                       cwd=tmp_path, timeout=300)
    outputs = r.stdout.split(b"\1")[:-1]
    assert len(outputs) == len(evaluated), r.stderr
    for (text, want), out in zip(evaluated, outputs):
        got = dict(item.split(b"=", 1) for item in out.split(b"\0") if item)
        got = {k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape")
               for k, v in got.items() if k.decode(errors="replace") not in SHELL_OWN}
        want = {k: v for k, v in want.items() if k not in SHELL_OWN}
        assert got == want, text


@pytest.mark.parametrize("text", [
    "if true; then " * 400 + ":" + "; fi" * 400,
    "for x in 1; do " * 400 + ":" + "; done" * 400,
    "X=" + "${A:-" * 600 + "}" * 600,
])
def test_deep_nesting_needs_the_shell(tmp_path, text):
    """Nesting deeper than Python's stack: the shell's business (Unsupported), not a crash."""
    p = tmp_path / "deep.sh"
    p.write_text(text + "\n")
    with pytest.raises(Unsupported):
        envscripts.evaluate([str(p)], {})


def test_patterns_with_many_stars_do_not_hang(tmp_path, scripts_dir):
    """``*a*a*a...`` against a long name is exponential for a naive matcher."""
    p = tmp_path / "stars.sh"
    p.write_text(f'for f in {scripts_dir}/{"*a" * 30}*b; do X="$f"; done\nexport X\n')
    env = outcome(envscripts.evaluate, [str(p)], {}, allowed=(Unsupported,))
    assert isinstance(env, dict) and env["X"].endswith("*b")


def test_nul_byte_needs_the_shell(tmp_path):
    """An image script with a NUL byte: no value may carry one into execve."""
    p = tmp_path / "nul.sh"
    p.write_bytes(b"export A=x\0y\n")
    with pytest.raises(Unsupported):
        envscripts.evaluate([str(p)], {})


@pytest.mark.parametrize("text", ["export PS1", "X=$PPID; export X", "X=${IFS}; export X"])
def test_the_shells_own_variables_need_the_shell(tmp_path, text):
    """Unset, PS1, PPID, IFS... have the running shell's own values (dash and busybox differ)."""
    p = tmp_path / "own.sh"
    p.write_text(text + "\n")
    with pytest.raises(Unsupported):
        envscripts.evaluate([str(p)], {"PATH": "/bin"})


def test_carriage_returns_are_kept_as_sh_keeps_them(tmp_path):
    """A script saved with CRLF line ends: dash reads 'A=1\\r', and so must the interpreter."""
    p = tmp_path / "crlf.sh"
    p.write_bytes(b"export A=1\r\nB=x\ry\nexport B\n")
    env = envscripts.evaluate([str(p)], {})
    assert env["A"] == "1\r" and env["B"] == "x\ry"
    same_as_dash(tmp_path, [(p.read_bytes().decode(), env)], {})


@pytest.mark.parametrize("text", ["unset A!B", 'unset ""', "unset 1A", "unset -f x"])
def test_unset_of_a_bad_name_needs_the_shell(tmp_path, text):
    """sh stops at 'bad variable name' (unset is a special built-in): not evaluated here."""
    p = tmp_path / "unset.sh"
    p.write_text(f"{text}\nexport A=1\n")
    with pytest.raises(Unsupported):
        envscripts.evaluate([str(p)], {"PATH": "/bin"})


@pytest.mark.parametrize("text", ["if false; then X=1>\nfi", "if false; then a | ; fi",
                                  "if false; then els(e; fi", "for 1x in a; do :; done",
                                  "for a-b in a; do :; done", "X=1; export ${X}Y"])
def test_syntax_errors_in_untaken_branches_need_the_shell(tmp_path, text):
    """sh parses the whole script first: a redirection without a file, a pipe into nothing or
    a bad loop variable stops it, even where the branch would not run."""
    p = tmp_path / "syntax.sh"
    p.write_text(f"{text}\nexport A=1\n")
    with pytest.raises(Unsupported):
        envscripts.evaluate([str(p)], {"PATH": "/bin"})
