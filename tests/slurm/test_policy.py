"""The Slurm policy in hpccont/schedulers/slurm.py, without a cluster (plain data in, plan out)."""
import os
import time
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpccont.errors import HpccontError, ImageError, SchedulerError, UsageError
from hpccont.schedulers import slurm

ARGS = slurm.parse_plugin_args(["hpccont=/opt/bin/hpccont", "image_dir=/site/a:/site/b"])


def test_plugin_args_defaults_and_values():
    assert ARGS.hpccont == "/opt/bin/hpccont"
    assert ARGS.image_dirs == ["/site/a", "/site/b"]
    assert ARGS.wrap_batch is True
    off = slurm.parse_plugin_args(["wrap_batch=no"])
    assert off.wrap_batch is False
    # One switch for signatures (the site config's signatures.require): the old plugstack
    # argument is refused with where it went, not ignored.
    with pytest.raises(SchedulerError, match="signatures.require"):
        slurm.parse_plugin_args(["require_signature=yes"])


@pytest.mark.parametrize("bad", ["bogus=1", "wrap_batch=maybe", "noequals"])
def test_plugin_args_refused(bad):
    with pytest.raises(SchedulerError):
        slurm.parse_plugin_args([bad])


def test_step_ids():
    assert slurm.parse_step("12.0").key == "12.0"
    assert slurm.parse_step("12.4294967291").key == "12.batch"
    assert slurm.parse_step("12.4294967290").kind == "interactive"
    assert slurm.parse_step("12.4294967292").kind == "extern"
    with pytest.raises(SchedulerError):
        slurm.parse_step("x")


@pytest.fixture
def make_image(busybox_squashfs, busybox_sif):
    """A real image (copied from the session's busybox images) under a chosen name."""
    def make(directory, name="img.sqsh"):
        p = directory / name
        shutil.copy(busybox_sif if name.endswith(".sif") else busybox_squashfs, p)
        return p
    return make


def test_options_beat_environment_and_none_disables(make_image, tmp_path):
    img = make_image(tmp_path)
    env = {"HPCCONT_CONTAINER": "/elsewhere.sif", "SLURM_SUBMIT_DIR": str(tmp_path)}
    step = slurm.parse_step("5.0")
    plan = slurm.plan_task(step, ARGS, {"container": str(img)}, ["prog", "a"], env, str(tmp_path))
    assert plan.image == str(img)
    assert plan.request.image == str(img) and plan.request.argv == ["prog", "a"]
    assert plan.request.join == "5.0"
    assert plan.env == {"HPCCONT_SLURM_STEP": "5.0"}
    assert plan.request.env == {"HPCCONT_SLURM_STEP": "5.0"}
    none = slurm.plan_task(step, ARGS, {"container": "none"}, ["prog"], env, str(tmp_path))
    assert none.image is None and none.argv == ["prog"]


def test_environment_form(make_image, tmp_path):
    img = make_image(tmp_path)
    env = {"HPCCONT_CONTAINER": "img.sqsh", "HPCCONT_CONTAINER_NV": "1",
           "SLURM_SUBMIT_DIR": str(tmp_path)}
    plan = slurm.plan_task(slurm.parse_step("5.1"), ARGS, {}, ["prog"], env, "/")
    assert plan.image == str(img) and plan.request.nv


def test_step_files_are_bound_where_slurm_keeps_them(make_image, tmp_path):
    """The batch script (one file, read-only) and the PMIx directories, at their host paths,
    wherever SlurmdSpoolDir and TmpFS are."""
    img = make_image(tmp_path)
    spool = tmp_path / "spool"
    (spool / "job00007").mkdir(parents=True)
    script = spool / "job00007" / "slurm_script"
    script.write_text("#!/bin/sh\n")
    pmix = spool / "pmix.7.0"
    pmix.mkdir()
    batch = slurm.parse_step("7.4294967291")
    plan = slurm.plan_task(batch, ARGS, {"container": str(img)}, [str(script)], {}, "/")
    assert [(b.src, b.dst, b.readonly) for b in plan.request.scheduler_binds] == \
        [(str(script), str(script), True)]
    env = {"PMIX_SERVER_TMPDIR": str(pmix), "PMIX_PTL_MODULE": "tcp,usock",
           "PMIX_MCA_gds": "hash", "PMIX_GDS_MODULE": "ds12"}
    plan = slurm.plan_task(slurm.parse_step("7.0"), ARGS, {"container": str(img)}, ["a.out"],
                           env, "/")
    assert [(b.src, b.readonly) for b in plan.request.scheduler_binds] == [(str(pmix), False)]
    # enroot's aliases; a value the user set stays.
    assert plan.request.env["PMIX_MCA_ptl"] == "tcp,usock"
    assert "PMIX_MCA_gds" not in plan.request.env


def test_pmix_dirs_found_by_slurms_layout_before_the_tasks_exist(make_image, tmp_path):
    """prepare runs before Slurm gives tasks their PMIX_* variables: the step's directories
    are found from slurm.conf (per-node %n paths too), as Slurm's PMIx plugin makes them."""
    img = make_image(tmp_path)
    spool, tmpfs = tmp_path / "spool" / "node2", tmp_path / "tmpfs" / "node2"
    server = spool / "pmix.9.0"
    client = tmpfs / f"spmix_appdir_{os.getuid()}_9.0"
    for d in (server, client, tmp_path / "spool" / "node2" / "pmix.8.0"):
        d.mkdir(parents=True)
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"SlurmdSpoolDir={tmp_path}/spool/%n  # per node\nTmpFS={tmp_path}/tmpfs/%n\n")
    env = {"SLURM_CONF": str(conf), "SLURMD_NODENAME": "node2",
           "SLURM_PMIX_MAPPING_SERV": "(vector,(0,1,2))"}
    plan = slurm.plan_task(slurm.parse_step("9.0"), ARGS, {"container": str(img)}, ["a.out"],
                           env, "/")
    assert sorted(b.src for b in plan.request.scheduler_binds) == sorted([str(server), str(client)])
    # Not a PMIx step: nothing of Slurm's is bound.
    del env["SLURM_PMIX_MAPPING_SERV"]
    plan = slurm.plan_task(slurm.parse_step("9.0"), ARGS, {"container": str(img)}, ["a.out"],
                           env, "/")
    assert plan.request.scheduler_binds == []


@pytest.mark.parametrize("spank,env,word", [
    ({"container": ""}, {}, "--container needs a value"),
    ({}, {"HPCCONT_CONTAINER": ""}, "--container needs a value"),
    ({"container": "x", "container-bind": "/tmp:"}, {}, "empty destination"),
    ({"container": "x", "container-bind": "/a,"}, {}, "--container-bind: empty item"),
    ({"container": "x", "container-env": "FOO,"}, {}, "--container-env: empty item"),
    ({"container": "x", "container-env": "A=1"}, {}, "not a variable name"),
    ({"container": "x", "container-mount-home": None, "no-container-mount-home": None}, {},
     "contradict"),
])
def test_bad_options_are_refused_by_name(spank, env, word):
    with pytest.raises(HpccontError) as e:
        slurm.job_options(spank, env)
    assert word in e.value.one_line()


def test_batch_step_follows_wrap_batch(make_image, tmp_path):
    img = make_image(tmp_path)
    batch = slurm.parse_step("7.4294967291")
    on = slurm.plan_task(batch, ARGS, {"container": str(img)}, ["script"], {}, "/")
    off = slurm.plan_task(batch, slurm.parse_plugin_args(["wrap_batch=no"]),
                          {"container": str(img)}, ["script"], {}, "/")
    assert on.image == str(img)
    assert off.image is None and "batch" in off.reason


@pytest.mark.parametrize("launcher", ["hpccont", "/usr/bin/container-exec", "apptainer"])
def test_no_double_wrapping(make_image, tmp_path, launcher):
    img = make_image(tmp_path)
    plan = slurm.plan_task(slurm.parse_step("1.0"), ARGS, {"container": str(img)},
                           [launcher, "exec", str(img), "x"], {}, "/")
    assert plan.image is None and plan.argv[0] == launcher


def test_relative_image_where_typed_then_submit_dir_then_site(make_image, tmp_path):
    typed, submit, site = (tmp_path / d for d in ("typed", "submit", "site"))
    for d in (typed, submit, site):
        d.mkdir()
    a = make_image(submit, "a.sqsh")
    b = make_image(typed, "a.sqsh")
    c = make_image(site, "pytorch.sif")
    args = slurm.parse_plugin_args([f"image_dir={site}"])
    env = {"SLURM_SUBMIT_DIR": str(submit)}
    assert slurm.find_image("a.sqsh", env, "/", []) == str(a)
    env["HPCCONT_SLURM_CWD"] = str(typed)
    assert slurm.find_image("a.sqsh", env, "/", []) == str(b)
    assert slurm.find_image("pytorch", env, "/", args.image_dirs) == str(c)
    assert slurm.image_kind(str(c)) == "sif"
    with pytest.raises(ImageError, match="not found"):
        slurm.find_image("missing", env, "/", args.image_dirs)


def test_image_kinds_refused(make_image, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ImageError, match="not a SIF, squashfs or sandbox image"):
        slurm.image_kind(str(text))
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    with pytest.raises(ImageError, match="OCI bundle"):
        slurm.image_kind(str(bundle))


def test_bad_option_values():
    with pytest.raises(UsageError):
        slurm.job_options({"container": "x", "container-mpi": "fast"}, {})
    with pytest.raises(UsageError):
        slurm.job_options({"container": "x", "container-bind": None}, {})


def test_spank_option_names():
    assert slurm.parse_spank_options(["hpccont-image=a.sif", "container-nv"]) == \
        {"container": "a.sif", "container-nv": None}


def _digest(path, log):
    fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK)
    try:
        return slurm.file_digest(fd, log)
    finally:
        os.close(fd)


def test_digest_cache(make_image, tmp_path):
    import hashlib
    img = make_image(tmp_path)
    log = str(tmp_path / "log.jsonl")
    want = hashlib.sha256(img.read_bytes()).hexdigest()
    assert _digest(img, log) == (want, img.stat().st_size)
    cache = tmp_path / "log.jsonl.digests"
    assert cache.exists() and (cache.stat().st_mode & 0o777) == 0o600
    assert _digest(img, log)[0] == want
    assert _digest("/dev/null", log) == ("", 0)


def test_digest_cache_sees_a_rewrite_with_the_mtime_restored(make_image, tmp_path):
    """Same size, same mtime, new content: only the ctime tells, and it is in the key."""
    import hashlib
    img = make_image(tmp_path)
    log = str(tmp_path / "log.jsonl")
    before = os.stat(img)
    assert _digest(img, log)[0] == hashlib.sha256(img.read_bytes()).hexdigest()
    data = bytearray(img.read_bytes())
    data[-1] ^= 0xFF
    time.sleep(0.01)
    with open(img, "r+b") as f:
        f.write(data)
    os.utime(img, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(img).st_mtime_ns == before.st_mtime_ns
    assert _digest(img, log)[0] == hashlib.sha256(bytes(data)).hexdigest()


def test_record_keeps_only_the_job_values_it_uses():
    jobenv = {"LD_PRELOAD": "/home/u/evil.so", "PYTHONPATH": "/home/u", "PATH": "/home/u/bin",
              "PWD": "/home/u", "HPCCONT_CONTAINER": "a.sif", "HPCCONT_CONTAINER_NV": "1",
              "SLURM_SUBMIT_DIR": "/home/u", "HPCCONT_SLURM_CWD": "/home/u/run"}
    assert slurm.accounting_environ(jobenv) == {
        "PWD": "/home/u", "HPCCONT_CONTAINER": "a.sif", "HPCCONT_CONTAINER_NV": "1",
        "SLURM_SUBMIT_DIR": "/home/u", "HPCCONT_SLURM_CWD": "/home/u/run"}


def test_job_identity():
    assert slurm.parse_identity("1001:1002:1002,27") == slurm.JobIdentity(1001, 1002, [1002, 27])
    assert slurm.parse_identity("5:6:") == slurm.JobIdentity(5, 6, [])
    with pytest.raises(SchedulerError):
        slurm.parse_identity("root")


def test_plugstack_seconds():
    assert slurm.parse_plugin_args(["prepare_timeout=20"]).prepare_timeout == 20
    with pytest.raises(SchedulerError):
        slurm.parse_plugin_args(["prepare_timeout=soon"])


@pytest.mark.parametrize("per_node,node,want", [("64", "0", 64), ("2(x3),1", "2", 2),
                                                ("2(x3),1", "3", 1), ("", "0", 0)])
def test_tasks_on_this_node(per_node, node, want):
    env = {"SLURM_STEP_TASKS_PER_NODE": per_node, "SLURM_NODEID": node}
    assert slurm.tasks_on_this_node(env) == want


def test_lone_task_does_not_join(make_image, tmp_path):
    img = make_image(tmp_path)
    env = {"SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_NODEID": "0"}
    plan = slurm.plan_task(slurm.parse_step("3.0"), ARGS, {"container": str(img)}, ["p"], env, "/")
    assert plan.request.join is None


def test_install_plugin(make_image, tmp_path, hpccont, install):
    src = Path(__file__).resolve().parents[2] / "spank_plugin"
    r = hpccont("slurm", "install-plugin", "--source", src, "--prefix", tmp_path / "usr",
                "--plugstack", tmp_path / "plugstack.d/hpccont.conf",
                "--cli-filter", tmp_path / "cli_filter.lua", "--image-dir", "/site/img", "--wrap-batch", "no")
    if not (shutil.which("make") and Path("/usr/include/slurm/spank.h").exists()):
        assert r.returncode == 9 and len(r.stderr.splitlines()) == 1
        return
    assert r.returncode == 0, r.stderr
    said = r.stdout
    so = tmp_path / "usr/lib/hpccont/hpccont_spank.so"
    assert so.exists()
    line = (tmp_path / "plugstack.d/hpccont.conf").read_text().split()
    assert line[:2] == ["required", str(so)]
    launcher = tmp_path / "usr/lib/hpccont/bin/hpccont"
    assert f"hpccont={launcher}" in line and "image_dir=/site/img" in line
    # An isolated interpreter, owned by root, that nobody else can change.
    first = launcher.read_text().splitlines()[0]
    assert first.startswith("#!/") and first.endswith(" -IS")
    st = launcher.stat()
    assert st.st_uid == 0 and not st.st_mode & 0o022
    r = subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.startswith("hpccont ")
    assert "wrap_batch=no" in line
    assert "slurm_cli_pre_submit" in (tmp_path / "cli_filter.lua").read_text()
    # beside the launcher that builds the steps' containers: the image server's caching
    # adapter, and the step builder the plugin runs in place of that launcher's prepare
    for key, name, missing in (("fusecache", "hpccont-fusecache.so", "run without it"),
                               ("step", "hpccont-step", "planned and built by Python"),
                               ("account", "hpccont-account", "written by Python")):
        copy = tmp_path / "usr/lib/hpccont/bin" / name
        if install[key] is not None:
            assert copy.read_bytes() == install[key].read_bytes() and f"installed {copy}" in said
            assert copy.stat().st_uid == 0 and not copy.stat().st_mode & 0o022
        else:
            assert not copy.exists() and missing in said
    bad = hpccont("slurm", "install-plugin", "--source", src, "--prefix", tmp_path / "u2", "--wrap-batch", "maybe",
                  "--plugstack", tmp_path / "p2", "--no-cli-filter")
    assert bad.returncode == 9 and "wrap_batch" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.slow
def test_install_plugin_from_the_installed_package(tmp_path):
    """After a plain ``pip install`` (no source tree), install-plugin finds the plugin sources
    and cli_filter.lua in the package itself."""
    if not (shutil.which("make") and Path("/usr/include/slurm/spank.h").exists()):
        pytest.skip("needs make and libslurm-dev")
    repo = Path(__file__).resolve().parents[2]
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(target), str(repo)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (target / "hpccont/data/spank_plugin/cli_filter.lua").is_file()
    r = subprocess.run([sys.executable, "-c", "import sys; from hpccont.cli.main import main; "
                        "sys.exit(main())", "slurm", "install-plugin", "--prefix",
                        str(tmp_path / "usr"), "--plugstack", str(tmp_path / "p.conf"),
                        "--cli-filter", str(tmp_path / "cli_filter.lua")],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "usr/lib/hpccont/hpccont_spank.so").is_file()
    assert "slurm_cli_pre_submit" in (tmp_path / "cli_filter.lua").read_text()


def test_the_steps_first_node_alone_sets_the_admin_comment():
    from hpccont.schedulers.slurm.accounting import sets_admin_comment
    from hpccont.schedulers.slurm.plugin import StepId
    assert sets_admin_comment(StepId("5", "0"), 0)
    assert not sets_admin_comment(StepId("5", "0"), 2)
    assert sets_admin_comment(StepId("5", "0"), None)       # a plugin that did not say
    assert sets_admin_comment(StepId("5", "batch"), 0)
    assert not sets_admin_comment(StepId("5", "extern"), 0)


def test_account_node_index_must_be_a_number(hpccont):
    r = hpccont("slurm", "account", "--step", "5.0", "--node", "x", "--", "true")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "--node" in r.stderr
