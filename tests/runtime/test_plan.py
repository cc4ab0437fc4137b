"""Launch plans, computed without privileges: bind parsing, default mounts, policy, environment."""
import json
import os

import pytest

from hpccont import config
from hpccont.errors import BindError, PolicyError, SignatureError, UsageError
from hpccont.runtime import environment as E
from hpccont.runtime import mounts as M
from hpccont.runtime.plan import make_plan
from hpccont.runtime.request import Bind, ContainerRequest


@pytest.mark.parametrize("spec,expected", [
    ("/data", Bind("/data", "/data", False)),
    ("/data:/mnt", Bind("/data", "/mnt", False)),
    ("/data:/mnt:ro", Bind("/data", "/mnt", True)),
    ("/data:/mnt:rw", Bind("/data", "/mnt", False)),
    ("/data::ro", Bind("/data", "/data", True)),
    ("/a/../b:/c/./d", Bind("/b", "/c/d", False)),
])
def test_parse_bind(spec, expected):
    assert M.parse_bind(spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("", "empty bind spec"),
    ("/a:/b:rx", "bad bind option 'rx'"),
    ("/a:/b:ro:x", "expected SRC[:DST[:ro|rw]]"),
    (":/b", "empty source"),
    ("/a:relative", "destination must be an absolute path"),
])
def test_parse_bind_errors(spec, message):
    with pytest.raises(BindError, match=message.replace("[", r"\[").replace("]", r"\]")):
        M.parse_bind(spec)


def test_parse_binds_comma_lists():
    binds = M.parse_binds(["/a,/b:/c:ro", "/d"])
    assert [b.spec() for b in binds] == ["/a:/a:rw", "/b:/c:ro", "/d:/d:rw"]


def test_check_bind_source(tmp_path):
    M.check_bind_source(Bind(str(tmp_path), "/x"))
    with pytest.raises(BindError, match="does not exist"):
        M.check_bind_source(Bind(str(tmp_path / "missing"), "/x"))
    with pytest.raises(BindError, match="not allowed"):
        M.check_bind_source(Bind("/etc/shadow", "/x"), ["/etc/shadow"])


def test_resolve_in_root_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    (root / "link_abs").symlink_to("/usr")
    (root / "link_out").symlink_to("../../../../etc")
    assert M.resolve_in_root(str(root), "/link_abs/lib") == str(root / "usr/lib")
    assert M.resolve_in_root(str(root), "/new/dir") == str(root / "new/dir")
    with pytest.raises(BindError, match="escapes the container root"):
        M.resolve_in_root(str(root), "/../etc")
    with pytest.raises(BindError, match="escapes the container root"):
        M.resolve_in_root(str(root), "/link_out/passwd")
    (root / "loop").symlink_to("loop")
    with pytest.raises(BindError, match="too many levels of symbolic links"):
        M.resolve_in_root(str(root), "/loop/x")


def test_default_mounts_and_contain():
    cfg = config.defaults()["mounts"]
    targets = [m.target for m in M.default_mounts(cfg, contain=False)]
    for t in ("/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/etc/hosts", "/etc/localtime",
              "/etc/resolv.conf"):
        assert t in targets
    contained = {m.target: m.kind for m in M.default_mounts(cfg, contain=True)}
    assert contained["/tmp"] == "tmpfs" and contained["/var/tmp"] == "tmpfs"
    # As Apptainer: --contain keeps /etc/hosts and /etc/localtime of the host files, no others
    assert contained["/etc/hosts"] == "bind" and contained["/etc/localtime"] == "bind"
    assert "/etc/resolv.conf" not in contained
    cfg["tmp"] = False
    assert "/tmp" not in [m.target for m in M.default_mounts(cfg, contain=False)]


def _plan(image, cwd="/tmp", environ=None, cfg=None, **kw):
    req = ContainerRequest(image=str(image), argv=kw.pop("argv", ["true"]), **kw)
    cfg = cfg or config.defaults()
    return make_plan(req, cfg, environ or {"HOME": "/root", "TERM": "xterm"}, cwd)


def test_plan_for_squashfs(busybox_squashfs, tmp_path):
    plan = _plan(busybox_squashfs, binds=[Bind(str(tmp_path), "/data", True)])
    assert plan.image.kind == "squashfs" and plan.image.offset == 0
    by_target = {m.target: m for m in plan.mounts}
    assert by_target["/data"].readonly and by_target["/data"].source == str(tmp_path)
    assert by_target["/etc/passwd"].kind == "passwd"
    assert plan.cwd == "/tmp"
    assert plan.argv == ["true"]
    json.dumps(plan.to_dict())  # --dry-run prints exactly this


def test_plan_home_options(busybox_squashfs, tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    plan = _plan(busybox_squashfs, home=f"{home}:/home/inside")
    by_target = {m.target: m for m in plan.mounts}
    assert by_target["/home/inside"].source == str(home)
    assert plan.identity.home == "/home/inside" and plan.env["HOME"] == "/home/inside"
    plan = _plan(busybox_squashfs, containall=True)
    assert {m.target: m.kind for m in plan.mounts}[plan.identity.home] == "tmpfs"


def test_plan_workdir(busybox_squashfs, tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    plan = _plan(busybox_squashfs, cwd=str(d))
    assert plan.cwd == str(d)
    plan = _plan(busybox_squashfs, cwd=str(d), contain=True)
    assert plan.cwd == plan.identity.home
    assert _plan(busybox_squashfs, pwd="/opt").cwd == "/opt"
    with pytest.raises(UsageError, match="absolute"):
        _plan(busybox_squashfs, pwd="rel")


def test_plan_policy(busybox_squashfs, busybox_rootfs, tmp_path):
    cfg = config.defaults()
    cfg["images"]["allowed_dirs"] = [str(tmp_path)]
    with pytest.raises(PolicyError, match="outside the allowed image directories"):
        _plan(busybox_squashfs, cfg=cfg)
    cfg = config.defaults()
    cfg["mounts"]["user_binds"] = False
    with pytest.raises(PolicyError, match="user bind mounts are disabled"):
        _plan(busybox_squashfs, cfg=cfg, binds=[Bind("/tmp", "/x")])
    cfg = config.defaults()
    cfg["images"]["allow_sandbox"] = False
    with pytest.raises(PolicyError, match="sandbox images are not allowed"):
        _plan(busybox_rootfs, cfg=cfg)
    cfg = config.defaults()
    cfg["signatures"]["require"] = True
    with pytest.raises(SignatureError, match="cannot be signed"):
        _plan(busybox_squashfs, cfg=cfg)


def test_plan_actions(busybox_squashfs):
    assert _plan(busybox_squashfs, action="run", argv=["a"]).argv == ["/.singularity.d/runscript", "a"]
    assert _plan(busybox_squashfs, action="test", argv=[]).argv == ["/.singularity.d/test"]
    assert _plan(busybox_squashfs, action="shell", argv=[]).argv == ["/bin/sh"]
    assert _plan(busybox_squashfs, action="run", app="foo", argv=[]).argv == [
        "/scif/apps/foo/scif/runscript"]
    with pytest.raises(UsageError, match="needs a command"):
        _plan(busybox_squashfs, argv=[])


def test_environment_rules():
    host = {"PATH": "/host/bin", "LD_LIBRARY_PATH": "/host/lib", "FOO": "1", "TERM": "xterm",
            "HOME": "/root", "HPCCONT_ENV_BAR": "2", "APPTAINERENV_BAZ": "3",
            "SINGULARITYENV_FOO": "4"}
    env, over = E.container_environment(host, cleanenv=False, user_env={"QUX": "5"}, home="/h",
                                        user="u", image_path="/x/img.sif")
    assert env["PATH"] == E.DEFAULT_PATH and env["LD_LIBRARY_PATH"] == "/.singularity.d/libs"
    assert env["FOO"] == "4" and env["BAR"] == "2" and env["BAZ"] == "3" and env["QUX"] == "5"
    assert "HPCCONT_ENV_BAR" not in env
    assert env["HPCCONT_IMAGE_PATH"] == env["APPTAINER_CONTAINER"] == "/x/img.sif"
    assert "HPCCONT_CONTAINER" not in env   # would ask Slurm/PBS to wrap inner jobs
    assert env["HPCCONT_NAME"] == "img.sif"
    assert over == {"BAR": "2", "BAZ": "3", "FOO": "4", "QUX": "5"}
    env, _ = E.container_environment(host, cleanenv=True, user_env={}, home="/h", user="u",
                                     image_path="/x")
    assert "FOO" in env  # SINGULARITYENV_FOO still applies with --cleanenv
    assert env["FOO"] == "4" and "TERM" in env
    env, _ = E.container_environment({"FOO": "1"}, cleanenv=True, user_env={}, home="/h",
                                     user="u", image_path="/x")
    assert "FOO" not in env


def test_env_file(tmp_path):
    f = tmp_path / "env"
    f.write_text("# comment\n\nA=1\nexport B='two words'\nC=\"x=y\"\n")
    assert E.read_env_file(str(f)) == {"A": "1", "B": "two words", "C": "x=y"}
    # a shell script, as Apptainer evaluates it: host variables visible but not passed on
    # unless assigned, set -a, commands refused
    f.write_text('D="$HOSTV/x"\nexport E\nif [ -n "$HOSTV" ]; then F=yes; fi\nPWD=/no\n')
    assert E.read_env_file(str(f), {"HOSTV": "h", "E": "e", "OTHER": "o"}) == {
        "D": "h/x", "E": "e", "F": "yes"}
    f.write_text("1BAD=x\n")
    with pytest.raises(UsageError, match="command"):
        E.read_env_file(str(f))
    with pytest.raises(UsageError, match="No such file"):
        E.read_env_file(str(tmp_path / "missing"))


def test_env_script_quotes():
    s = E.env_script({"A": "it's $HOME"}, ["/nv"])
    assert "export A='it'\\''s $HOME'" in s
    assert s.endswith('exec "$@"')


def test_cli_parser():
    from hpccont.cli.launch import build_request
    req = build_request("exec", ["-B", "/a:/b:ro", "--bind=/c", "--env", "X=1,Y=2", "-e",
                                 "--pwd", "/w", "img.sif", "cmd", "--bind", "-x"],
                        environ={"HPCCONT_BIND": "/z"})
    assert [b.spec() for b in req.binds] == ["/z:/z:rw", "/a:/b:ro", "/c:/c:rw"]
    assert req.env == {"X": "1", "Y": "2"} and req.cleanenv and req.pwd == "/w"
    assert req.image == "img.sif" and req.argv == ["cmd", "--bind", "-x"]
    for bad, msg in ((["--bogus", "i"], "unknown option --bogus"), (["--pwd"], "needs a value"),
                     (["--nv=maybe", "i"], "takes no value"), ([], "missing image"),
                     (["--mpi", "x", "i"], "hybrid or bind")):
        with pytest.raises(UsageError, match=msg):
            build_request("exec", bad, environ={})


def test_contain_keeps_only_hosts_and_localtime_of_site_binds(busybox_sif):
    cfg = config.defaults()
    cfg["mounts"]["binds"] = ["/etc/hosts:/etc/hosts", "/usr/share:/opt/share"]
    free = [m.target for m in _plan(busybox_sif, cfg=cfg).mounts if "mounts.binds" in m.why]
    assert free == ["/etc/hosts", "/opt/share"]
    kept = [m.target for m in _plan(busybox_sif, cfg=cfg, contain=True).mounts
            if "mounts.binds" in m.why]
    assert kept == ["/etc/hosts"]


def test_sif_plan_opens_the_image_once(busybox_sif, tmp_path, monkeypatch):
    """The header read finds the overlay partition too: planning a SIF launch opens the image
    once (on NFS or Lustre every open is a metadata round trip), with and without one."""
    from hpccont.image import overlay
    with_part = tmp_path / "with-overlay.sif"
    with_part.write_bytes(busybox_sif.read_bytes())
    assert overlay.create(str(with_part), 64, sparse=True) == "sif"
    opened = []
    real_open = os.open

    def counting_open(path, *args, **kw):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", counting_open)
    bare = _plan(busybox_sif)
    part = _plan(with_part)
    assert opened.count(str(busybox_sif)) == 1 and opened.count(str(with_part)) == 1, opened
    assert [o["why"] for o in bare.overlays] == []
    assert [(o["why"], o["readonly"]) for o in part.overlays] == [
        ("overlay partition of the image", True)]
    assert part.overlays[0]["offset"] == part.image.overlay_offset > part.image.offset
