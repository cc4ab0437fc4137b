"""Cold recipes (runtime/cold.py, launcher/cold.c): a launch with a container of its own,
repeated from C without a Python interpreter.

The first launch plans in Python and records what it did; the same launch again (same words up
to the image, directory, ids, environment, image, config) is built by the C launcher.  The
"strict" launcher has no Python behind it: a launch that works there took the C path, one that
does not ends with 127 "cannot execute /nonexistent/hpccont".  Everything runs as the
unprivileged test user, on real squashfuse mounts.
"""
import os
import pwd
import shutil
import signal
import time
from pathlib import Path

import pytest

import helpers
from hpccont.runtime import cold, share
from hpccont.runtime.recipe import decode
from hpccont.runtime.plan_types import Identity, LaunchPlan, Mount
from hpccont.runtime.request import ContainerRequest
from hpccont.image.source import ImageSource

pytestmark = pytest.mark.timeout(300)

PROBE = ('echo "pwd=$(pwd)"; echo "id=$(id)"; grep -E "^(SigIgn|NoNewPrivs)" /proc/self/status; '
         'umask; env | sort | sed "s/^/env:/"; cut -d" " -f4,5,6 /proc/self/mountinfo | '
         'sed "s/^/mnt:/"; ls -l /etc/passwd /etc/group | cut -c1-10; cat /etc/passwd')
NO_PYTHON = "cannot execute /nonexistent/hpccont"


@pytest.fixture
def image(busybox_sif, shared_tmp):
    """A private copy of the image, so that its recipes are this test's alone."""
    return helpers.private_copy(busybox_sif, shared_tmp / "img.sif")


@pytest.fixture
def work(shared_tmp):
    d = shared_tmp / "work"
    d.mkdir()
    d.chmod(0o777)
    return d


def _launch(entry, work, *args, env=None):
    return helpers.as_user(["sh", "-c", 'cd "$0" && exec "$@"', str(work), str(entry), *args],
                           env=env)


def _state_dir():
    return Path(f"/tmp/hpccont-{pwd.getpwnam('hpcuser').pw_uid}")


def _cold_recipes(image):
    return [p for p in _state_dir().glob("cold-*") if str(image).encode() in p.read_bytes()]


def _no_server_left(image):
    deadline = time.monotonic() + 5
    while helpers.fuse_processes(str(image)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not helpers.fuse_processes(str(image))


def test_c_build_gives_the_python_paths_results(fast, image, work):
    """Same directory, ids, signal dispositions, environment, mounts (with their flags) and
    identity files; the second launch ran with no Python behind the launcher."""
    args = ["exec", "-B", f"{work}:/data:ro", str(image), "sh", "-c", PROBE]
    env = {"FOO": "a b", "HPCCONT_SHARE": "0"}
    python = _launch(fast["dir"] / "hpccont", work, *args, env=env)
    assert python.returncode == 0, python.stderr
    assert len(_cold_recipes(image)) == 1
    c = _launch(fast["strict"] / "hpccont", work, *args, env=env)
    assert c.returncode == 0, c.stderr
    strip = lambda out: [x for x in out.splitlines() if not x.startswith("env:_=")]  # noqa
    assert strip(c.stdout) == strip(python.stdout)
    assert f"pwd={work}" in c.stdout and " /data ro," in c.stdout
    ignored = int(next(x for x in c.stdout.splitlines() if x.startswith("SigIgn:")).split()[1],
                  16)
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0 and "NoNewPrivs:\t1" in c.stdout
    assert _no_server_left(image)


def test_recipes_under_the_users_runtime_directory(fast, image, work):
    """With XDG_RUNTIME_DIR (a login node's /run/user/UID), recipes live in
    $XDG_RUNTIME_DIR/hpccont-UID, where both the Python and the C side look."""
    pw = pwd.getpwnam("hpcuser")
    runtime = Path(f"/run/user/{pw.pw_uid}")
    made = not runtime.exists()
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, pw.pw_uid, pw.pw_gid)
    runtime.chmod(0o700)
    try:
        env = {"XDG_RUNTIME_DIR": str(runtime)}
        hp, strict = fast["dir"] / "hpccont", fast["strict"] / "hpccont"
        assert _launch(hp, work, "exec", str(image), "true", env=env).returncode == 0
        recipes = [p for p in (runtime / f"hpccont-{pw.pw_uid}").glob("cold-*")
                   if str(image).encode() in p.read_bytes()]
        assert len(recipes) == 1 and not _cold_recipes(image)
        r = _launch(strict, work, "exec", str(image), "true", env=env)
        assert r.returncode == 0, r.stderr
    finally:
        if made:
            shutil.rmtree(runtime, ignore_errors=True)


def test_exit_status_arguments_and_run(fast, image, work):
    """Another command after the same head reuses the recipe (the command is not in the key);
    exit statuses pass through; `run` keeps its runscript prefix; a missing command is one
    line, 127."""
    hp, strict = fast["dir"] / "hpccont", fast["strict"] / "hpccont"
    assert _launch(hp, work, "exec", str(image), "true").returncode == 0
    r = _launch(strict, work, "exec", str(image), "sh", "-c", "echo $0 $1; exit 3", "x", "y")
    assert (r.returncode, r.stdout) == (3, "x y\n"), r.stderr
    r = _launch(strict, work, "exec", str(image), "no-such-program")
    assert r.returncode == 127 and r.stderr.strip().endswith(
        "no-such-program: command not found in the container"), r.stderr
    assert _launch(hp, work, "run", str(image), "a").returncode == 0
    r = _launch(strict, work, "run", str(image), "b", "c")
    assert (r.returncode, r.stdout) == (0, "runscript args: b c\n"), r.stderr


def test_anything_in_the_key_or_on_the_host_changed_is_planned_again(fast, image, work,
                                                                       shared_tmp):
    hp, strict = fast["dir"] / "hpccont", fast["strict"] / "hpccont"
    src = shared_tmp / "src"
    src.mkdir()
    src.chmod(0o777)
    args = ["exec", "-B", f"{src}:/src", str(image), "ls", "/src"]
    assert _launch(hp, work, *args).returncode == 0
    assert _launch(strict, work, *args).returncode == 0
    # another environment, another directory: another key, no recipe
    r = _launch(strict, work, *args, env={"FOO": "other"})
    assert r.returncode == 127 and NO_PYTHON in r.stderr
    # the image rewritten in place: its stamp is in the key
    image.write_bytes(image.read_bytes())
    r = _launch(strict, work, *args)
    assert r.returncode == 127 and NO_PYTHON in r.stderr
    assert _launch(hp, work, *args).returncode == 0
    assert _launch(strict, work, *args).returncode == 0
    # hpccont installed again (its entry point rewritten): recipes of the old one never match
    entry = fast["py"] / "hpccont"
    entry.write_bytes(entry.read_bytes())
    r = _launch(strict, work, *args)
    assert r.returncode == 127 and NO_PYTHON in r.stderr
    assert _launch(hp, work, *args).returncode == 0
    assert _launch(strict, work, *args).returncode == 0
    # a bind source gone from the host: C changes nothing and hands over; Python's error
    src.rmdir()
    r = _launch(strict, work, *args)
    assert r.returncode == 127 and NO_PYTHON in r.stderr
    r = _launch(hp, work, *args)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(src) in r.stderr


def test_a_bind_through_a_retargeted_link_is_judged_again(fast, image, work, shared_tmp):
    """The bind policy compares resolved paths: a link allowed when the recipe was made and
    pointed at a denied directory since must not be bound from the recipe.  C hands the launch
    back; Python refuses it as always."""
    hp, strict = fast["dir"] / "hpccont", fast["strict"] / "hpccont"
    allowed, denied = shared_tmp / "allowed", shared_tmp / "denied"
    for d in (allowed, denied):
        d.mkdir()
        (d / "f").write_text(d.name + "\n")
        os.system(f"chmod -R a+rX {d}")
    link = shared_tmp / "link"
    link.symlink_to(allowed)
    site = shared_tmp / "site.yaml"
    site.write_text(f"mounts:\n  user_bind_denylist: [{denied}]\n")
    site.chmod(0o644)
    env = {"HPCCONT_CONFIG": str(site)}
    args = ["exec", "-B", f"{link}:/d", str(image), "cat", "/d/f"]
    assert _launch(hp, work, *args, env=env).stdout == "allowed\n"
    assert _launch(strict, work, *args, env=env).stdout == "allowed\n"     # from the recipe
    link.unlink()
    link.symlink_to(denied)
    r = _launch(strict, work, *args, env=env)
    assert r.returncode == 127 and NO_PYTHON in r.stderr and "denied" not in r.stdout
    r = _launch(hp, work, *args, env=env)
    assert r.returncode != 0 and "not allowed" in r.stderr and "denied" not in r.stdout, r.stderr


def test_a_shell_is_planned_for_itself(fast, image, work):
    """The exec part depends on whether the command is a shell (prompt, /bin/sh -> bash): a
    recipe made for another command is not applied to one."""
    hp, strict = fast["dir"] / "hpccont", fast["strict"] / "hpccont"
    assert _launch(hp, work, "exec", str(image), "/bin/true").returncode == 0
    r = _launch(strict, work, "exec", str(image), "/bin/sh", "-c", 'echo "$PS1"')
    assert r.returncode == 127 and NO_PYTHON in r.stderr
    python = _launch(hp, work, "exec", str(image), "/bin/sh", "-c", 'echo "$PS1"')
    assert python.returncode == 0 and python.stdout.strip(), python.stderr
    r = _launch(strict, work, "exec", str(image), "/bin/sh", "-c", 'echo "$PS1"')
    assert (r.returncode, r.stdout) == (0, python.stdout), r.stderr


def test_a_failure_after_unshare_is_one_line_and_drops_the_recipe(fast, image, work):
    """Past the first namespace there is no way back to Python: one line, exit 255, nothing
    left running, and the recipe removed so that the next launch is planned again."""
    hp, strict = fast["dir"] / "hpccont", fast["strict"] / "hpccont"
    assert _launch(hp, work, "exec", str(image), "true").returncode == 0
    [recipe] = _cold_recipes(image)
    data = recipe.read_bytes()
    server = next(f for f in data.split(b"\0") if f.startswith(b"Q"))
    recipe.write_bytes(data.replace(b"\0" + server + b"\0", b"\0Q/bin/false\0"))
    r = _launch(strict, work, "exec", str(image), "true")
    assert r.returncode == 255, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("hpccont: cannot start container (")
    assert not recipe.exists()
    assert _no_server_left(image)
    assert _launch(hp, work, "exec", str(image), "true").returncode == 0
    assert _launch(strict, work, "exec", str(image), "true").returncode == 0


def test_executable_image_loop_builds_from_c(fast, busybox_sif, shared_tmp):
    """./tool.sif ARG in a loop, with sharing off: one recipe, written by the first start."""
    img = helpers.private_copy(busybox_sif, shared_tmp / "tool.sif", 0o755)
    loop = ["sh", "-c", 'cd "$0" && for f in a b c; do ./tool.sif echo "$f"; done',
            str(shared_tmp)]
    # One PATH for every round (the environment is in the key): its run-singularity is the
    # launcher with Python behind it, then the strict one.
    bindir = shared_tmp / "bin"
    bindir.mkdir()
    link = bindir / "run-singularity"
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    link.symlink_to(fast["dir"] / "run-singularity")
    r = helpers.as_user(loop, env=env)
    assert r.stdout.splitlines() == [f"runscript args: echo {f}" for f in "abc"], r.stderr
    [recipe] = _cold_recipes(img)
    stamp = recipe.stat().st_mtime_ns
    # the runscript's files are read for any arguments (no 'V': not tied to the command)
    head, rest = recipe.read_bytes().split(b"\n", 1)
    fields = decode(rest[int(head.split()[1]):])          # after the key material
    assert "R" in fields and "V" not in fields
    link.unlink()
    link.symlink_to(fast["strict"] / "run-singularity")
    r = helpers.as_user(loop, env=env)
    assert r.stdout.splitlines() == [f"runscript args: echo {f}" for f in "abc"], r.stderr
    assert recipe.stat().st_mtime_ns == stamp


def test_32_concurrent_builds_from_one_recipe(fast, image, work):
    """32 launches at once from the same recipe: 32 containers of their own, every one started
    and gone (no FUSE server left), the recipe untouched."""
    hp, strict = fast["dir"] / "hpccont", fast["strict"] / "hpccont"
    assert _launch(hp, work, "exec", str(image), "true").returncode == 0
    [recipe] = _cold_recipes(image)
    stamp = recipe.stat().st_mtime_ns
    script = (f'cd "{work}" && for i in $(seq 32); do "{strict}" exec "{image}" sh -c '
              r'"echo \$\$" & done; wait')
    r = helpers.as_user(["sh", "-c", script])
    pids = r.stdout.split()
    assert len(pids) == 32 and len(set(pids)) == 32, r.stderr
    assert recipe.stat().st_mtime_ns == stamp
    assert _no_server_left(image)


def test_dry_run_says_whether_a_launch_is_recorded(fast, image, work, hpccont_user):
    import json
    r = _launch(fast["dir"] / "hpccont", work, "exec", "--dry-run", str(image), "true")
    assert json.loads(r.stdout)["recipe"] == {"record": True}, r.stderr
    r = _launch(fast["dir"] / "hpccont", work, "exec", "--dry-run", "--pid", str(image), "true")
    assert json.loads(r.stdout)["recipe"] == {"record": False,
                                              "why": "pid is planned at every launch"}
    r = hpccont_user("exec", "--dry-run", image, "true", cwd=work)
    assert "no C launcher" in json.loads(r.stdout)["recipe"]["why"]


def test_nothing_is_recorded_without_the_launcher(hpccont_user, image, work):
    """The Python entry point alone (no hpccont-fast beside it, as without a C compiler at
    install time) writes no recipe that nobody would read."""
    r = hpccont_user("exec", image, "true", cwd=work)
    assert r.returncode == 0, r.stderr
    assert _cold_recipes(image) == []


# -- no privileges: what is recorded -----------------------------------------------------------
def _plan(**kw):
    img = ImageSource(kind="sif", path="/x.sif", offset=4096, size=1, fs_type="squashfs")
    ident = Identity(uid=1000, gid=1000, user="u", home="/home/u")
    return LaunchPlan(image=img, mode=kw.pop("mode", "rootless"), identity=ident,
                      mounts=[Mount(kind="bind", target="/tmp", source="/tmp")], env={},
                      cwd="/", argv=["true"], **kw)


CFG = {"runtime": {"overlay": "kernel", "tmp_size": "64m"}}


@pytest.mark.parametrize("plan_kw, req_kw, why", [
    ({}, {}, None),
    ({"mode": "root"}, {}, "root launches"),
    ({}, {"nv": True}, "--nv"),
    ({}, {"mpi": "bind"}, "--mpi"),
    ({}, {"debug": True}, "--debug"),
    ({"overlays": [{"kind": "dir"}]}, {}, "overlays"),
    ({"pid": True}, {}, "pid"),
    ({"warnings": ["w"]}, {}, "warnings"),
    ({"umask": 0o22}, {}, "umask"),
])
def test_what_is_never_recorded(plan_kw, req_kw, why):
    got = cold.unrecordable(_plan(**plan_kw), CFG, ContainerRequest(image="/x.sif", **req_kw))
    assert (got is None) if why is None else (why in got)


def test_fuse_overlayfs_and_sandboxes_are_planned_every_time():
    req = ContainerRequest(image="/x.sif")
    assert "fuse-overlayfs" in cold.unrecordable(_plan(), {"runtime": {"overlay": "fuse-overlayfs"}},
                                                 req)
    plan = _plan()
    plan.image = ImageSource(kind="sandbox", path="/d", fs_type="dir")
    assert cold.unrecordable(plan, CFG, req)


@pytest.mark.parametrize("cmd, cls", [
    ([], "none"), ([b"/bin/sh"], "sh1"), ([b"/bin/sh", b"-c", b"x"], "sh"),
    ([b"/bin/bash"], "sh"), ([b"sh"], ""), ([b"/bin/true"], ""),
])
def test_command_class(cmd, cls):
    assert share.command_class(cmd) == cls


def test_a_nul_in_any_payload_records_nothing(tmp_path):
    (tmp_path / "files").mkdir()
    plan = _plan()
    plan.mounts = [Mount(kind="bind", target="/a\0b", source="/tmp")]
    with pytest.raises(ValueError):
        cold.build_fields(plan, {"runtime": {"tmp_size": "1m", "prefetch": False}},
                          str(tmp_path), "/usr/bin/squashfuse_ll", "", "lowerdir=x", [])
    assert os.listdir(tmp_path / "files") == []
