"""Fuzzing the C recipe readers: ``recipe_parse`` and ``recipe_environment`` of the SPANK plugin
(spank_plugin/recipe.c, which every Slurm task and the exec fast path run) and the fast path's
recipe file reader (launcher/fast.c), built into one harness (recipe_harness.c) with
AddressSanitizer and UBSan where the compiler has them, fed every input through one process.

hypothesis draws the inputs (recipes as ``hpccont slurm prepare`` and the shared-mount path
write them, damaged byte by byte; raw bytes; task environments; argv0), then the harness runs
them all.  Each result is checked against the format's rules written again here in Python: a
recipe is accepted exactly when it is well formed, its lists have the fields it holds, the
environment it makes is the one those rules make, and no input crashes the harness or makes
the sanitizers report.
"""
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helpers  # noqa: E402
from fuzzlib import EXAMPLES, mutate  # noqa: E402

from hpccont.runtime import recipe  # noqa: E402

HERE = Path(__file__).resolve().parent
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
BATCH = 5000
LISTS = "akuUscf"
MAGIC = b"hpccont-fast-1"
KEY = b"hpccont-fast-1\0fuzz\0"


def seeds() -> list:
    base = [("m", "rootless"), ("p", "4242"), ("t", "123456"), ("h", "/work/job"),
            ("w", "/work/job")]
    return [
        recipe.encode(base + [("a", "/bin/sh"), ("a", "-c"), ("a", 'exec "$@"'), ("a", "hpccont"),
                              ("u", "PATH"), ("u", "LD_PRELOAD"), ("U", "HPCCONT_ENV_"),
                              ("U", "APPTAINER_"), ("s", "PATH=/usr/bin:/bin"),
                              ("s", "HOME=/home/u"), ("s", "A=x=y\nz"), ("c", "SLURM_PROCID"),
                              ("f", "/tmp/s/join-x"), ("f", "/tmp/s/join-x.lock")]),
        recipe.encode([("m", "root"), ("p", "77"), ("t", "9"), ("h", "/"), ("w", "/root"),
                       ("K", ""), ("k", "HOME"), ("k", "TERM"), ("k", "SLURM_PROCID"),
                       ("s", "PS1=x"), ("c", "OMP_NUM_THREADS")]),
        recipe.encode(base + [("x", ""), ("L", "/run/u/join-k.lock"), ("G", "/run/u/join-k.guests"),
                              ("a", "/usr/bin/env"), ("s", "PATH=/bin"), ("s", "LANG=C.UTF-8")]),
        # a cold recipe as runtime/cold.py writes it
        recipe.encode([("B", "1000 1000"), ("S", "/opt/h/data/session"), ("T", "mode=0755,size=64m"),
                       ("Q", "/usr/bin/squashfuse_ll"), ("I", "/img.sif"), ("J", "40960"),
                       ("Y", "lowerdir=/s/lower,upperdir=/s/upper,workdir=/s/work"), ("E", ""),
                       ("V", "true"), ("R", "/bin/busybox"), ("Mb", ""), ("A", "/proc"),
                       ("A", "/proc"), ("Mbro", ""), ("A", "/etc/hosts"), ("A", "/etc/hosts"),
                       ("McC", ""), ("A", "passwd"), ("A", "/etc/passwd"), ("A", "u:x:1:1::/:/bin/sh\n"),
                       ("Mt", ""), ("A", "/dev/shm"), ("A", "mode=1777"), ("Ml", ""),
                       ("A", "/proc/self/fd"), ("A", "/dev/fd"), ("m", "rootless"), ("h", "/w"),
                       ("w", "/w"), ("x", ""), ("W", ""), ("K", ""), ("s", "PATH=/bin")]),
    ]


SEEDS = seeds()
ENV_NAMES = ["PATH", "HOME", "TERM", "LANG", "SLURM_PROCID", "OMP_NUM_THREADS", "PS1", "A",
             "LD_PRELOAD", "HPCCONT_ENV_X", "APPTAINER_BIND", "NOEQUALS", "", "="]
ARGV0 = [b"", b"/bin/sh", b"/bin/bash", b"true", b"/bin/sh\xff"]


# ------------------------------------------------------------------- the rules, in Python
def fields_of(data: bytes):
    """[(tag byte, payload)] of a well-formed recipe, or None where recipe_parse must refuse."""
    if not data or data[-1] != 0:
        return None
    out = [(f[:1], f[1:]) for f in data[:-1].split(b"\0")]
    first = {}
    for tag, payload in out:
        first.setdefault(tag, payload)
    build = b"B" in first           # a cold recipe has no keeper
    if not all(t in first for t in (b"m", b"h", b"w") + (() if build else (b"p", b"t"))):
        return None
    if first[b"m"] not in (b"rootless", b"root"):
        return None
    if not build and not _strtol_ok(first[b"p"]):
        return None
    return out


def ops_of(fields):
    """cold.c parse_ops's rules: an 'M' with a payload starts an operation (kind, then flags),
    each 'A' is an argument of the last one (at most 4); an 'A' before any, or a fifth, refuses
    the recipe.  None: refused; "-": not a cold recipe."""
    if not any(tag == b"B" for tag, _ in fields):
        return "-"
    ops = []
    for tag, payload in fields:
        if tag == b"M" and payload:
            ops.append((payload[:1], payload[1:], []))
        elif tag == b"A":
            if not ops or len(ops[-1][2]) == 4:
                return None
            ops[-1][2].append(payload)
    return ops


def fits(fields, argv0: bytes) -> int:
    """recipe_fits with argv = [argv0] (or none): the first 'W' field, if any, must be the
    command's class (share.command_class)."""
    made_for = next((p for tag, p in fields if tag == b"W"), None)
    if made_for is None:
        return 1
    from hpccont.runtime.share import command_class
    return int(made_for == command_class([argv0] if argv0 else []).encode())


def _strtol_ok(text: bytes) -> bool:
    """strtol(text, &end, 10) consumed it all, and the number is a pid above 1."""
    s = text.lstrip(b" \t\n\v\f\r")
    digits = s[1:] if s[:1] in (b"+", b"-") else s
    if not digits or not digits.isdigit():
        return False
    return 1 < int(s) < 1 << 31


def _name_len(entry: bytes) -> int:
    eq = entry.find(b"=")
    return eq if eq >= 0 else len(entry)


def _named(entry: bytes, name: bytes) -> bool:
    n = _name_len(entry)
    return len(name) == n and entry[:n] == name


def environment_of(fields, task_env: list, argv0: bytes) -> list:
    """recipe_environment's rules (spank_plugin/recipe.c), entry for entry."""
    lists = {t: [p for tag, p in fields if tag == t.encode()] for t in LISTS}
    keep_only = any(tag == b"K" for tag, _ in fields)
    exact = any(tag == b"x" for tag, _ in fields)
    env = []
    for e in task_env:
        if keep_only:
            if any(_named(e, k) for k in lists["k"]):
                env.append(e)
        elif not any(_named(e, u) for u in lists["u"]) and not any(
                e.startswith(p) for p in lists["U"]):
            env.append(e)

    def put(entry):
        n = _name_len(entry)
        for i, old in enumerate(env):
            if _name_len(old) == n and old[:n] == entry[:n]:
                env[i] = entry
                return
        env.append(entry)

    def lookup(entries, name):
        return next((e for e in entries if _named(e, name) and b"=" in e), None)
    for s in lists["s"]:
        put(s)
    for c in lists["c"]:
        found = lookup(task_env, c)
        if found is not None:
            put(found)
    if not exact and argv0 in (b"/bin/sh", b"/bin/bash") and lookup(env, b"PS1") is None:
        put(b"PS1=Hpccont> ")
    return env


# ------------------------------------------------------------------- the harness
@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if not shutil.which("cc"):
        pytest.skip("needs a C compiler")
    d = tmp_path_factory.mktemp("recipe-harness")
    exe = d / "harness"
    base = ["cc", "-std=gnu99", "-O1", "-g", "-Wall", "-Wextra",
            f"-I{helpers.REPO / 'launcher'}", f"-I{helpers.REPO / 'spank_plugin'}", "-o", str(exe),
            str(HERE / "recipe_harness.c"), str(helpers.REPO / "spank_plugin" / "recipe.c")]
    r = subprocess.run(base[:1] + SANITIZE + base[1:], capture_output=True, text=True)
    sanitized = r.returncode == 0
    if not sanitized:               # no sanitizer runtime: still fuzz, without it
        r = subprocess.run(base, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (d / "state").mkdir(mode=0o700)
    return exe, d / "state", sanitized


def encode_inputs(cases: list) -> bytes:
    out = []
    for case in cases:
        if case[0] == "recipe":
            _, data, env, argv0 = case
            blob = b"".join(e + b"\0" for e in env)
            out.append(struct.pack("<II", 0, len(data)) + data + struct.pack("<I", len(blob))
                       + blob + struct.pack("<I", len(argv0)) + argv0)
        else:
            out.append(struct.pack("<II", 1, len(case[1])) + case[1])
    return b"".join(out)


def run_harness(harness, cases: list) -> list:
    exe, state, _ = harness
    r = subprocess.run([str(exe), str(state)], input=encode_inputs(cases), capture_output=True,
                       timeout=300)
    results, pos = [], 0
    out = r.stdout
    try:
        for case in cases:
            status = out[pos]
            pos += 1
            if case[0] == "recipe" and status == 1:
                counts = struct.unpack_from("<10I", out, pos)
                pos += 40
                env = []
                for _ in range(counts[9]):
                    end = out.index(b"\0", pos)
                    env.append(out[pos:end])
                    pos = end + 1
                fit, n = struct.unpack_from("<II", out, pos)
                pos += 8
                ops = "-" if n == 0xfffffffe else None if n == 0xffffffff else []
                for _ in range(n if isinstance(ops, list) else 0):
                    kind = out[pos:pos + 1]
                    end = out.index(b"\0", pos + 1)
                    flags, pos = out[pos + 1:end], end + 1
                    (nargs,) = struct.unpack_from("<I", out, pos)
                    pos += 4
                    args = []
                    for _ in range(nargs):
                        end = out.index(b"\0", pos)
                        args.append(out[pos:end])
                        pos = end + 1
                    ops.append((kind, flags, args))
                results.append((1, counts[:9], env, fit, ops))
            else:
                results.append((status,))
    except (IndexError, ValueError, struct.error):
        pass
    assert r.returncode == 0 and len(results) == len(cases), (
        f"harness exit {r.returncode} at input {len(results)}: "
        f"{cases[len(results)] if len(results) < len(cases) else None!r}\n"
        f"{r.stderr.decode(errors='replace')[-3000:]}")
    return results


def check(case, result) -> str:
    if case[0] == "file":
        data = case[1]
        head = MAGIC + b" %d\n" % len(KEY)
        if not data.startswith(head + KEY):
            assert result == (0,), case
            return "file refused"
        want = 2 if fields_of(data[len(head) + len(KEY):]) is not None else 1
        assert result == (want,), case
        return "file read" if want == 2 else "file, recipe refused"
    _, data, env, argv0 = case
    fields = fields_of(data)
    if fields is None:
        assert result == (0,), case
        return "refused"
    assert result[0] == 1, case
    counts = [sum(1 for tag, _ in fields if tag == t.encode()) for t in LISTS]
    counts += [int(any(t == b"K" for t, _ in fields)), int(any(t == b"x" for t, _ in fields))]
    assert list(result[1]) == counts, case
    assert result[2] == environment_of(fields, env, argv0), case
    assert result[3] == fits(fields, argv0), case
    ops = ops_of(fields)
    assert result[4] == ops, case
    return "accepted" if ops == "-" else "cold, refused" if ops is None else "cold"


# ------------------------------------------------------------------- the inputs
tapes = st.binary(min_size=2, max_size=40)


def case_from(tape: bytes):
    choice, rest = tape[0] % 8, tape[1:]
    env = [ENV_NAMES[b % len(ENV_NAMES)].encode() + (b"=v%d" % b if b % 5 else b"")
           for b in rest[:4]]
    argv0 = ARGV0[tape[1] % len(ARGV0)]
    if choice == 7:                                     # raw bytes
        return ("recipe", rest, env, argv0)
    if choice == 6:                                     # a fast-path recipe file
        seed = SEEDS[rest[0] % len(SEEDS)] if rest else SEEDS[0]
        file = MAGIC + b" %d\n" % len(KEY) + KEY + seed
        return ("file", mutate(file, rest[1:]) if rest[:1] != b"\0" else file)
    return ("recipe", mutate(SEEDS[choice % len(SEEDS)], rest), env, argv0)


def test_fuzz_c_recipe_parser(harness):
    cases = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(tapes)
    def collect(tape):
        cases.append(case_from(tape))

    collect()
    assert len(cases) >= EXAMPLES * 0.9
    seen: dict = {}
    for start in range(0, len(cases), BATCH):
        batch = cases[start:start + BATCH]
        for case, result in zip(batch, run_harness(harness, batch)):
            what = check(case, result)
            seen[what] = seen.get(what, 0) + 1
    assert seen.get("accepted") and seen.get("refused") and seen.get("file read"), seen
    assert seen.get("cold") and seen.get("cold, refused"), seen
    sanitizers = "ASan+UBSan" if harness[2] else "no sanitizers"
    print(f"C recipe readers ({sanitizers}): {len(cases)} inputs: {seen}")


@pytest.mark.parametrize("data", [b"", b"\0", b"m", b"mroot", b"mroot\0p2\0t\0h\0w",
                                  b"mroot\0p 99\0t\0h\0w\0", b"mroot\0p99x\0t\0h\0w\0",
                                  b"mroot\0p99999999999999999999\0t\0h\0w\0",
                                  b"mroot\0p4294967297\0t\0h\0w\0", b"mroot\0p1\0t\0h\0w\0"])
def test_edge_recipes(harness, data):
    case = ("recipe", data, [b"A=1"], b"/bin/sh")
    check(case, run_harness(harness, [case])[0])


# ------------------------------------------------------------------- cold.c's mount-point walk
WALK_PARTS = ["a", "b", "inner", "rel", "up", "abs", "loop", "file", "flink", "dangling", "new",
              "..", "."]


def _walk_tree(root: Path) -> None:
    """Links that stay inside, climb out, loop, dangle, or pass through a file."""
    import os
    (root / "b" / "inner").mkdir(parents=True)
    (root / "file").write_text("x")
    for name, target in (("a", "/b"), ("rel", "b/inner"), ("up", "../../.."), ("abs", "/"),
                         ("loop", "loop"), ("flink", "file"), ("dangling", "/missing/dir"),
                         ("fdir", "file/x")):
        os.symlink(target, root / name)


def _listing(root: Path) -> list:
    import os
    out = []
    for d, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = Path(d) / n
            rel = str(p.relative_to(root))
            out.append((rel, os.readlink(p) if p.is_symlink() else
                        "dir" if p.is_dir() else "file"))
    return sorted(out)


def _python_walk(root: Path, path: str, is_dir: bool, clamp: bool):
    import errno
    import os
    from hpccont.rootpath import open_mountpoint
    try:
        fd = open_mountpoint(str(root), path, is_dir, escape="clamp" if clamp else "refuse",
                             error=ValueError)
    except ValueError as e:
        return ("error", errno.EXDEV if "escapes" in str(e) else errno.ELOOP)
    except OSError as e:
        return ("error", e.errno)
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return ("fd", where)


def _c_walks(harness, cases) -> list:
    exe, state, _ = harness
    blob = b"".join(struct.pack("<II", 3, len(bytes(r))) + bytes(r) + struct.pack("<I", len(p))
                    + p + struct.pack("<I", f) for r, p, f in cases)
    r = subprocess.run([str(exe), str(state)], input=blob, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    out, pos, results = r.stdout, 0, []
    for _ in cases:
        status, pos = out[pos], pos + 1
        if status == 0:
            results.append(("error", struct.unpack_from("<I", out, pos)[0]))
            pos += 4
        else:
            end = out.index(b"\0", pos)
            results.append(("fd", out[pos:end].decode()))
            pos = end + 1
    return results


def test_c_mount_point_walk_matches_python(harness, tmp_path):
    """cold.c's walk (what a cold recipe's mounts are placed on) against rootpath.open_mountpoint
    (what apply.py places them on): the same directory found or made, the same refusal, and
    the same entries created, for every path over a tree of links that stay inside, climb out,
    loop, dangle or pass through a file; each side in its own fresh copy of the tree."""
    import os
    import errno
    import random
    rng = random.Random(17)
    paths = {"/", "/b", "/a/inner", "/rel/new", "/up/x", "/abs/b", "/loop", "/file", "/flink",
             "/dangling", "/fdir", "/new/deeper/x", "/..", "/b/../../b", "/a/../new", "/./b/."}
    while len(paths) < 400:
        paths.add("/" + "/".join(rng.choice(WALK_PARTS) for _ in range(rng.randint(1, 4))))
    cases, python, trees = [], [], []
    for i, path in enumerate(sorted(paths)):
        flags = rng.randint(0, 3)
        py_root, c_root = tmp_path / f"p{i}", tmp_path / f"c{i}"
        for root in (py_root, c_root):
            root.mkdir()
            _walk_tree(root)
        python.append(_python_walk(py_root, path, bool(flags & 1), bool(flags & 2)))
        cases.append((os.fsencode(c_root), path.encode(), flags))
        trees.append((py_root, c_root))
    def inside(result, root):
        if result[0] != "fd":
            return result
        rel = os.path.relpath(result[1], root)
        return ("fd", "/" if rel == "." else "/" + rel)
    outcomes = set()
    for (_, path, flags), want, got, (py_root, c_root) in zip(
            cases, python, _c_walks(harness, cases), trees):
        assert inside(got, c_root) == inside(want, py_root), (path, flags)
        assert _listing(c_root) == _listing(py_root), (path, flags)
        outcomes.add(want[0] if want[0] == "fd" else want[1])
    assert {"fd", errno.EXDEV, errno.ELOOP, errno.ENOTDIR} <= outcomes, outcomes
