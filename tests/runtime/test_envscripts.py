"""Environment scripts evaluated in Python (hpccont/runtime/envscripts.py) against the real
shells that images use: every supported script must give exactly the environment that dash
(Debian's /bin/sh) and busybox sh give, and everything else must be refused (Unsupported),
which makes the runtime fall back to /bin/sh."""
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hpccont.image.build import oci, scif
from hpccont.image.layout import ENV_SCRIPTS
from hpccont.runtime import envscripts
from hpccont.runtime.envscripts import Unsupported

SHELLS = [s for s in ("/bin/dash", shutil.which("busybox")) if s and os.path.exists(s)]
# What the shells add on their own (not the scripts' doing).
SHELL_OWN = ("PWD", "SHLVL", "OLDPWD", "_")


def shell_env(shell: str, scripts: list, environ: dict, cwd) -> dict:
    argv = [shell] + (["sh"] if shell.endswith("busybox") else [])
    body = "".join(f'. "{p}"; ' for p in scripts) + "exec /usr/bin/env -0"
    r = subprocess.run(argv + ["-c", body], env=environ, capture_output=True, cwd=cwd)
    assert r.returncode == 0, r.stderr
    out = dict(item.split(b"=", 1) for item in r.stdout.split(b"\0") if item)
    return {k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape")
            for k, v in out.items() if k.decode() not in SHELL_OWN}


def python_env(scripts: list, environ: dict) -> dict:
    got = envscripts.evaluate([str(p) for p in scripts], dict(environ))
    return {k: v for k, v in got.items() if k not in SHELL_OWN}


def same_as_shells(tmp_path, texts: list, environ: dict) -> dict:
    scripts = []
    for n, text in enumerate(texts):
        p = tmp_path / f"{n:02d}-script.sh"
        p.write_text(text)
        scripts.append(p)
    environ = {"PATH": "/usr/bin:/bin", **environ}
    expected = python_env(scripts, environ)
    for shell in SHELLS:
        assert shell_env(shell, scripts, environ, tmp_path) == expected, shell
    return expected


LAYOUT = [ENV_SCRIPTS[n] for n in sorted(ENV_SCRIPTS)]


@pytest.mark.parametrize("environ", [
    {},
    {"LD_LIBRARY_PATH": ""},
    {"LD_LIBRARY_PATH": "/opt/lib"},
    {"SING_USER_DEFINED_PREPEND_PATH": "/pre", "SING_USER_DEFINED_APPEND_PATH": "/post"},
    {"SING_USER_DEFINED_PATH": "/only"},
])
def test_the_layout_scripts(tmp_path, environ):
    env = same_as_shells(tmp_path, LAYOUT, environ)
    assert env["LD_LIBRARY_PATH"].endswith("/.singularity.d/libs")
    assert env["PS1"] == "Apptainer> "


def test_oci_environment_with_awkward_values(tmp_path):
    values = [("A", 'quote " and \\ backslash'), ("B", "dollar $HOME and `tick`"),
              ("C", "spaces  and\ttabs"), ("D", "single ' quote"), ("E", "x=y;z|w&v"),
              ("PATH", "/opt/app/bin:/usr/local/bin:/usr/bin:/bin"), ("EMPTY", "")]
    text = "\n".join(["#!/bin/sh"] + [f"export {k}={oci._dq(v)}" for k, v in values]) + "\n"
    env = same_as_shells(tmp_path, [text], {"HOME": "/home/u"})
    expected = dict(values, B="dollar /home/u and `tick`")   # Docker ENV may use $VAR
    assert {k: env[k] for k, _ in values} == expected


@pytest.mark.parametrize("appname", [None, "tool"])
def test_scif_scripts(tmp_path, appname, monkeypatch):
    """SCIF: without an app the for loop and the error branch are not run; with one, its
    directory is searched and its own env script sourced (a glob in a for loop)."""
    apps = tmp_path / "scif/apps/tool/scif/env"
    apps.mkdir(parents=True)
    (apps / "90-environment.sh").write_text("export TOOL_VAR=from-app\n")
    text = (scif.apps_env_script(["tool"]).replace("/scif/apps", str(tmp_path / "scif/apps"))
            + scif.base_env_script("tool"))
    env = same_as_shells(tmp_path, [text], {"APPTAINER_APPNAME": appname} if appname else {})
    assert env.get("TOOL_VAR") == ("from-app" if appname else None)


CASES = {
    "assign-then-export": 'A=1\nB="$A x"\nexport B\n',
    "unexported-stays-inside": "INNER=1\nexport OUTER=$INNER\n",
    "defaults": 'export C=${UNSET:-default} D=${UNSET-dash} E=${EMPTY:-e} F=${EMPTY-f}\n',
    "alternatives": 'export G=${SET:+alt} H=${UNSET:+alt} I=${EMPTY+alt}\n',
    "assign-default": ': ${J:=dflt}\nexport J\nK=${K=kval}\nexport K\n',
    "unset": "unset HOME\nexport L=${HOME:-gone}\n",
    "if-elif-else": ('if [ "$SET" = no ]; then export M=1\nelif test -n "$SET"\nthen\n'
                     '  export M=2\nelse export M=3; fi\n'),
    "and-or": "[ -d /tmp ] && export N=dir || export N=nodir\n"
              "test -n \"$EMPTY\" || export O=empty\n",
    "negation-and-integers": '[ ! -z "$SET" ] && export P=1\n[ 3 -gt 2 ] && export Q=yes\n',
    "quoting": "export R='single $SET' S=\\$SET T=a\\ b U=\"in \\\"quotes\\\"\"\n",
    "continuation-comments": "# comment\nexport V=one\\\ntwo # trailing\n",
    "export-many": "W=2\nexport X W Y=3\n",
    "status": "false\nexport Z=$?\ntrue\nexport ZZ=$?\n",
    "export-star": "export STAR=* Q2=a?b\n",
    "file-tests": '[ -f /etc/passwd ] && export FT=f\n[ -x /bin/sh ] && export FX=x\n'
                  '[ -e /nonexistent ] || export FE=missing\n',
    "untaken-branch-may-hold-anything": 'if [ -z "$SET" ]; then echo hi >&2; exit 1; fi\n'
                                        'export AFTER=1\n',
    "empty-if-status": 'if false; then :; fi\nexport S2=$?\n',
    "lone-dollar-and-bracket": 'export DL="cost $ 5" BR="[x"\n',
    "empty-word-vanishes-in-for": 'for x in $EMPTY $UNSET; do export LOOPED=1; done\n'
                                  'for x in "$EMPTY"; do export QUOTED_LOOP=1; done\n',
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_constructs(tmp_path, name):
    same_as_shells(tmp_path, [CASES[name]], {"SET": "yes", "EMPTY": "", "HOME": "/home/u"})


def test_source_relative_to_other_scripts(tmp_path):
    (tmp_path / "inc.sh").write_text("export INCLUDED=yes\n")
    same_as_shells(tmp_path, [f'. "{tmp_path}/inc.sh"\nexport AFTER=$INCLUDED\n'], {})


UNSUPPORTED = {
    "command": "echo hi\n",
    "command-substitution": "export A=$(date)\n",
    "backticks": "export A=`date`\n",
    "arithmetic": "export A=$((1+2))\n",
    "length": "export A=${#PATH}\n",
    "trim": "export A=${PATH%:*}\n",
    "positional": "export A=$1\n",
    "all-args": 'export A="$@"\n',
    "tilde": "export A=~/bin\n",
    "tilde-in-path": "export A=/x:~/bin\n",
    "exit": "exit 0\n",
    "set": "set -e\n",
    "function": "f() { :; }\n",
    "while": "while false; do :; done\n",
    "case": "case x in x) ;; esac\n",
    "heredoc-redirection": "cat <<EOF\nx\nEOF\n",
    "pipe": "true | true\n",
    "prefix-assignment": "A=1 true\n",
    "export-nothing": "export\n",
    "export-option": "export -p\n",
    "source-by-name": ". inc.sh\n",
    "source-missing": ". /nonexistent/inc.sh\n",
    "unterminated": "export A='x\n",
    "missing-fi": "if true; then :\n",
    "glob-argument": "[ -f /etc/* ]\n",
    "field-splitting": "[ -n $SPACED ]\n",
    "integer-test-on-text": "[ a -eq 1 ]\n",
    "vanishing-test-argument": "[ -n $EMPTY ] && export V=1\n",
    # even untaken: the body is data that could look like commands (and close the if)
    "heredoc-in-untaken-branch": "if false; then\ncat <<true\nfi\nexport EVIL=1\ntrue\nfi\n",
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_refused(tmp_path, name):
    p = tmp_path / "s.sh"
    p.write_text(UNSUPPORTED[name])
    with pytest.raises(Unsupported):
        envscripts.evaluate([str(p)], {"PATH": "/bin", "SPACED": "a b", "EMPTY": ""})


values = st.text(st.characters(min_codepoint=1, max_codepoint=0x7e, blacklist_categories=("Cc",)),
                 max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=values, b=values, host=values)
def test_generated_quoting(tmp_path, a, b, host):
    """Random values through the quoting the image writers use, and expansions of them.  A
    value may itself hold shell syntax ($0, $(...)): then refusing is right (the runtime
    uses the shell), and otherwise the result must be the shells'."""
    text = (f"export A={oci._dq(a)}\n"
            f"B='{b.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'\n"
            'export C="${A}:${B}:${HOSTVAR:-none}"\n'
            'export D=${HOSTVAR:+"$HOSTVAR"}\n')
    try:
        same_as_shells(tmp_path, [text], {"HOSTVAR": host} if host else {})
    except Unsupported:
        assert "$" in a or "`" in a, a   # only a value with shell syntax of its own


@pytest.mark.parametrize("pattern,name,expected", [
    ("*.sh", "90-environment.sh", True), ("*.sh", "90-environment.sh~", False),
    ("9?-*", "95-apps.sh", True), ("[0-4]*", "50-x", False), ("[!a-c]x", "dx", True),
    ("[!a-c]x", "bx", False), ("a*b*c", "aXbYc", True), ("a*b*c", "acb", False),
    ("", "", True), ("x", "", False),
])
def test_match(pattern, name, expected):
    assert envscripts.match(pattern, name) is expected


def test_pathname_expansion_matches_the_shell(tmp_path):
    for name in ("b.sh", "a.sh", ".hidden.sh", "c.txt"):
        (tmp_path / "d" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "d" / name).write_text("")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x.sh").write_text("")
    for pattern in (f"{tmp_path}/d/*.sh", f"{tmp_path}/*/*.sh", f"{tmp_path}/d/.*.sh",
                    f"{tmp_path}/nothing/*.sh"):
        shell = subprocess.run(["/bin/dash", "-c", f'for f in {pattern}; do echo "$f"; done'],
                               capture_output=True, text=True).stdout.split("\n")[:-1]
        assert (envscripts.pathname_expansion(pattern) or [pattern]) == shell


# Generated scripts from the supported subset: whenever the evaluator accepts one, dash must
# agree exactly (and must not complain: where the shell reports an error, refusing is right).
NAMES = st.sampled_from(["A", "B", "EMPTY", "UNSET", "SET"])
TEXTS = st.sampled_from(["x", "a b", "", "*", "/tmp", "-n", "=", "$", "it's", 'q"q', "-z"])


def _quoted(text: str, style: str) -> str:
    if style == "single":
        return "'" + text.replace("'", "'\\''") + "'"
    if style == "double":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'
    return "".join("\\" + c if not c.isalnum() and c not in "/-_." else c for c in text)


@st.composite
def words(draw):
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["text", "var", "op"]))
        if kind == "text":
            parts.append(_quoted(draw(TEXTS), draw(st.sampled_from(["single", "double", "bare"]))))
        else:
            name = draw(NAMES)
            inner = f"${{{name}}}" if kind == "var" else \
                f"${{{name}{draw(st.sampled_from([':-', '-', ':+', '+', ':=', '=']))}" \
                f"{_quoted(draw(TEXTS), 'double')}}}"
            parts.append(f'"{inner}"' if draw(st.booleans()) else inner)
    return "".join(parts)


@st.composite
def commands(draw, depth=0):
    kind = draw(st.sampled_from(["assign", "export", "unset", "test", "status", "andor"]
                                + (["if"] if depth < 2 else [])))
    if kind == "assign":
        return f"{draw(NAMES)}={draw(words())}"
    if kind == "export":
        return f"export {draw(NAMES)}={draw(words())}" if draw(st.booleans()) else \
            f"export {draw(NAMES)}"
    if kind == "unset":
        return f"unset {draw(NAMES)}"
    if kind == "status":
        return draw(st.sampled_from(["true", "false", ":"]))
    if kind == "test":
        form = draw(st.sampled_from(["one", "z", "n", "eq", "ne"]))
        w1, w2 = draw(words()), draw(words())
        body = {"one": w1, "z": f"-z {w1}", "n": f"-n {w1}", "eq": f"{w1} = {w2}",
                "ne": f"{w1} != {w2}"}[form]
        return f"[ {body} ]" if draw(st.booleans()) else f"test {body}"
    if kind == "andor":
        return f"{draw(commands(depth + 1))} {draw(st.sampled_from(['&&', '||']))} " \
               f"{draw(commands(depth + 1))}"
    then = "; ".join(draw(st.lists(commands(depth + 1), min_size=1, max_size=3)))
    other = "; ".join(draw(st.lists(commands(depth + 1), max_size=2)))
    return f"if {draw(commands(depth + 1))}; then {then}; " + \
        (f"else {other}; " if other else "") + "fi"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=st.lists(commands(), min_size=1, max_size=6))
def test_generated_scripts_agree_with_dash(tmp_path, script):
    text = "\n".join(script) + "\nexport A B EMPTY SET STATUS=$?\n"
    path = tmp_path / "gen.sh"
    path.write_text(text)
    environ = {"PATH": "/usr/bin:/bin", "SET": "yes", "EMPTY": ""}
    try:
        ours = python_env([path], environ)
    except Unsupported:
        return
    r = subprocess.run(["/bin/dash", "-c", f'. "{path}"; exec /usr/bin/env -0'], env=environ,
                       capture_output=True, cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr, (text, r.stderr)
    theirs = {k.decode(): v.decode() for k, v in
              (item.split(b"=", 1) for item in r.stdout.split(b"\0") if item)
              if k.decode() not in SHELL_OWN}
    assert ours == theirs, text
