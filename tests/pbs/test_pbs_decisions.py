"""The PBS decision functions on their own: plain data in, plain data out."""
import os

import pytest

from hpccont.errors import ConfigError, ImageError, PolicyError, SignatureError, UsageError
from hpccont.schedulers import common
from hpccont.schedulers import pbs as hp


def ctx(**kw):
    kw.setdefault("job_id", "7.srv")
    return hp.JobContext(**kw)


def test_every_job_option_has_a_resource_and_a_type():
    assert set(hp.DEFAULT_RESOURCES.values()) == set(common.OPTION_TABLE) - {"no-container-mount-home"}
    assert set(hp.RESOURCE_TYPES) == set(hp.DEFAULT_RESOURCES)
    for res, option in hp.DEFAULT_RESOURCES.items():
        takes_value = common.OPTION_TABLE[option][1]
        assert hp.RESOURCE_TYPES[res] == ("string" if takes_value else "boolean")


@pytest.mark.parametrize("raw, message", [
    ([], "must be a JSON object"),
    ({"hpccont": "hpccont"}, "absolute path"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"join": "yes"}, "join must be a bool"),
    ({"cleanup_grace": True}, "cleanup_grace must be a int"),
    ({"pythonpath": [1]}, "list of strings"),
    ({"on_reject": "hold"}, "on_reject must be one of delete, requeue"),
    ({"resources": {"img": "container-image"}}, "unknown option 'container-image'"),
    ({"resources": {"container_nv": "container-nv"}}, "must map some resource to 'container'"),
])
def test_bad_hook_config_is_one_line(raw, message):
    with pytest.raises(ConfigError, match=message):
        hp.parse_hook_config(raw)


def test_hook_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read hook config"):
        hp.load_hook_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        hp.load_hook_config(str(bad))
    assert hp.load_hook_config(None) == hp.HookConfig()


def test_shipped_default_config_is_valid_and_matches_defaults():
    cfg = hp.load_hook_config(str(hp_repo() / "pbs_hooks" / "hpccont.json"))
    assert cfg.resources == hp.DEFAULT_RESOURCES
    assert cfg.on_reject == "delete" and cfg.wrap_tm_tasks and cfg.wrap_job_script


def hp_repo():
    from pathlib import Path
    return Path(__file__).resolve().parents[2]


def test_resources_win_over_task_env_over_variable_list():
    c = ctx(variables={"HPCCONT_CONTAINER": "var.sif", "HPCCONT_CONTAINER_MPI": "hybrid",
                       "HPCCONT_CONTAINER_NV": "1"},
            env={"HPCCONT_CONTAINER": "env.sif", "HPCCONT_CONTAINER_MPI": "bind"},
            resources={"container": "res.sif"})
    cfg = hp.HookConfig()
    assert hp.raw_options(c, cfg, task_env=True) == {
        "container": "res.sif", "container-mpi": "bind", "container-nv": "1"}
    # execjob_begin has no task environment
    assert hp.raw_options(c, cfg, task_env=False)["container-mpi"] == "hybrid"


def test_resource_values_become_options():
    res = {"container": "a.sif", "container_bind": "/a:/a;/b:/c:ro", "container_nv": True,
           "container_cleanenv": False, "container_mount_home": False,
           "container_env": "X;Y", "container_workdir": "/w", "container_mpi": "bind",
           "container_writable_tmpfs": True, "ncpus": 4}
    opts = hp.job_options(ctx(resources=res), hp.HookConfig())
    assert opts.binds == ["/a:/a", "/b:/c:ro"] and opts.env_names == ["X", "Y"]
    assert opts.nv and opts.writable_tmpfs and not opts.cleanenv and not opts.mount_home
    assert (opts.workdir, opts.mpi, opts.image) == ("/w", "bind", "a.sif")


def test_renamed_resources():
    cfg = hp.parse_hook_config({"resources": {"image": "container", "gpu_libs": "container-nv"}})
    opts = hp.job_options(ctx(resources={"image": "x.sif", "gpu_libs": True, "container": "no"}), cfg)
    assert opts.image == "x.sif" and opts.nv


def test_bad_option_values_are_usage_errors():
    with pytest.raises(UsageError, match="container-mpi must be one of"):
        hp.job_options(ctx(resources={"container": "a.sif", "container_mpi": "magic"}), hp.HookConfig())
    with pytest.raises(UsageError, match="needs a value"):
        hp.job_options(ctx(variables={"HPCCONT_CONTAINER_BIND": ""}), hp.HookConfig())


@pytest.mark.parametrize("program, wrapped", [
    (["/usr/bin/hpccont", "exec", "img.sif", "prog"], True),
    (["hpccont", "--debug", "run", "img.sif"], True),
    (["/opt/bin/container-exec", "prog"], True),
    (["run-singularity", "img.sif"], True),
    (["/usr/bin/apptainer", "exec", "x.sif", "true"], True),
    (["singularity", "run", "x.sif"], True),
    (["hpccont", "inspect", "img.sif"], False),
    (["/bin/sh", "-c", "hpccont exec img true"], False),
    (["/usr/bin/orted", "--hnp"], False),
    ([], False),
])
def test_already_wrapped(program, wrapped):
    assert common.starts_own_container(program) is wrapped


@pytest.mark.parametrize("progname, argv, program", [
    ("/bin/bash", ["-bash"], ["/bin/bash", "-l"]),
    ("/bin/sh", ["-sh", "script"], ["/bin/sh", "-l", "script"]),
    ("/bin/bash", ["-bash", "-l"], ["/bin/bash", "-l"]),
    ("/usr/bin/python3", ["-python3", "x.py"], ["/usr/bin/python3", "x.py"]),
    ("/home/u/a.out", ["a.out", "1", "2"], ["/home/u/a.out", "1", "2"]),
    ("/bin/hostname", [], ["/bin/hostname"]),
])
def test_task_program(progname, argv, program):
    assert hp.task_program(progname, argv) == program


@pytest.mark.parametrize("primary, tasknum, script", [
    (True, "1", True), (True, None, True), (True, "2", False), (False, "1", False),
])
def test_job_script_or_tm_task(primary, tasknum, script):
    env = {} if tasknum is None else {"PBS_TASKNUM": tasknum}
    assert hp.is_job_script(ctx(primary=primary, env=env)) is script


def test_join_key_is_a_safe_name():
    assert hp.join_key("123[4].srv.example.org") == "pbs-123_4_.srv.example.org"


def test_binds_policy(tmp_path):
    opts = common.JobOptions(image="x", binds=["/data:/data", "/etc/shadow:/s"])
    with pytest.raises(PolicyError, match="deny list"):
        hp.check_binds(opts, {"mounts": {"user_bind_denylist": ["/etc/shadow"]}})
    with pytest.raises(PolicyError, match="does not allow user bind mounts"):
        hp.check_binds(opts, {"mounts": {"user_binds": False}})
    with pytest.raises(UsageError, match="absolute path"):
        hp.check_binds(common.JobOptions(binds=["data:/d"]), {})
    hp.check_binds(common.JobOptions(binds=["/data:/data"]), {"mounts": {"user_bind_denylist": ["/root"]}})


def test_image_policy(tmp_path, busybox_squashfs, busybox_rootfs):
    cfg = hp.HookConfig()
    assert hp.check_image(str(busybox_squashfs), cfg, {}) == "squashfs"
    with pytest.raises(PolicyError, match="outside the allowed image directories"):
        hp.check_image(str(busybox_squashfs), cfg, {"images": {"allowed_dirs": [str(tmp_path)]}})
    # a symlink inside an allowed directory does not let an outside image in
    link = tmp_path / "sneaky.sqsh"
    link.symlink_to(busybox_squashfs)
    with pytest.raises(PolicyError, match="outside"):
        hp.check_image(str(link), cfg, {"images": {"allowed_dirs": [str(tmp_path)]}})
    with pytest.raises(PolicyError, match="squashfs images are not allowed"):
        hp.check_image(str(busybox_squashfs), cfg, {"images": {"allow_squashfs": False}})
    with pytest.raises(PolicyError, match="sandbox images are not allowed"):
        hp.check_image(str(busybox_rootfs), cfg, {"images": {"allow_sandbox": False}})
    with pytest.raises(SignatureError, match="requires signed SIF images"):
        hp.check_image(str(busybox_squashfs), cfg, {"signatures": {"require": True}})
    junk = tmp_path / "junk.sif"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageError, match="not a SIF, squashfs or sandbox image"):
        hp.check_image(str(junk), cfg, {})


def test_signature_check_is_pluggable(monkeypatch, busybox_squashfs):
    """Each check gets the image path and the descriptor it was opened with."""
    seen = []

    def check(image, cfg, site, fd):
        seen.append(image)
        assert os.path.samestat(os.fstat(fd), os.stat(image))
    monkeypatch.setattr(hp, "VERIFY", [check])
    from hpccont.image import source
    monkeypatch.setattr(source, "open_image", lambda p: type("S", (), {"kind": "sif"})())
    hp.check_image(str(busybox_squashfs), hp.HookConfig(), {"signatures": {"require": True}})
    assert seen == [str(busybox_squashfs)]
    seen.clear()
    hp.check_image(str(busybox_squashfs), hp.HookConfig(), {"signatures": {"require": True}}, verify=False)
    assert seen == []


def test_default_verify_runs_the_verify_command(tmp_path):
    """The command gets the open descriptor (/proc/self/fd/N), never the user's path; its
    messages name the image again."""
    image = tmp_path / "x.sif"
    image.write_bytes(b"SIF")
    fd = os.open(image, os.O_RDONLY)
    try:
        cfg = hp.HookConfig(verify_command=["/bin/sh", "-c", 'echo "bad key for $0 ($(cat "$0"))" >&2; exit 1'])
        with pytest.raises(SignatureError, match=f"signature check failed for {image}: "
                                                 f"bad key for {image} \\(SIF\\)"):
            hp._default_verify(str(image), cfg, {}, fd)
        hp._default_verify(str(image), hp.HookConfig(verify_command=["/bin/true"]), {}, fd)
        with pytest.raises(SignatureError, match="cannot verify"):
            hp._default_verify(str(image), hp.HookConfig(verify_command=[str(tmp_path / "none")]),
                               {}, fd)
    finally:
        os.close(fd)
