"""The hook file run as MoM runs it (harness pbs_python), for every event, option and refusal."""
import json
import os
import pwd
import shutil
import subprocess
import sys
import time

import pytest

from pbslib import DEFAULT_JOB_ID, job_user, option_args

JOB = DEFAULT_JOB_ID


# ------------------------------------------------------------------ execjob_begin

def test_begin_without_container_is_accepted(run_hook):
    out = run_hook("execjob_begin")
    assert out["accepted"] and not out["delete"] and not out["rerun"]


@pytest.mark.parametrize("how", ["variable", "resource"])
def test_begin_accepts_an_allowed_image(run_hook, busybox_squashfs, how):
    ask = {"variables": {"HPCCONT_CONTAINER": str(busybox_squashfs)}} if how == "variable" \
        else {"resources": {"container": str(busybox_squashfs)}}
    out = run_hook("execjob_begin", site={"images": {"allowed_dirs": [str(busybox_squashfs.parent)]}},
                   config={"debug": True}, **ask)
    assert out["accepted"], out
    assert any("accepted" in m for _, m in out["log"])


def test_begin_finds_bare_names_in_image_dirs(run_hook, busybox_squashfs):
    out = run_hook("execjob_begin", resources={"container": "busybox"},
                   site={"images": {"image_dirs": [str(busybox_squashfs.parent)]}})
    assert out["accepted"], out


def _refused(out, *fragments, delete=True):
    assert out["accepted"] is False, out
    for fragment in fragments:
        assert fragment in out["reject_msg"], out["reject_msg"]
    assert "\n" not in out["reject_msg"] and "Traceback" not in out["reject_msg"]
    assert out["exception"] is None, out["exception"]
    assert out["delete"] is delete and out["rerun"] is (not delete)
    # the reason is also in the job's log (tracejob)
    assert any(m.startswith(JOB + ";hpccont: ") for _, m in out["log"])


def test_begin_rejects_a_missing_image(run_hook):
    out = run_hook("execjob_begin", resources={"container": "nosuch.sif"})
    _refused(out, "container image 'nosuch.sif' not found")


def test_begin_rejects_an_image_outside_allowed_dirs(run_hook, busybox_squashfs, tmp_path):
    out = run_hook("execjob_begin", resources={"container": str(busybox_squashfs)},
                   site={"images": {"allowed_dirs": [str(tmp_path / "approved")]}})
    _refused(out, "outside the allowed image directories")


def test_begin_rejects_a_disallowed_image_kind(run_hook, busybox_squashfs, busybox_rootfs):
    _refused(run_hook("execjob_begin", variables={"HPCCONT_CONTAINER": str(busybox_squashfs)},
                      site={"images": {"allow_squashfs": False}}), "squashfs images are not allowed")
    _refused(run_hook("execjob_begin", variables={"HPCCONT_CONTAINER": str(busybox_rootfs)},
                      site={"images": {"allow_sandbox": False}}), "sandbox images are not allowed")


def test_begin_rejects_unsigned_images_when_signatures_are_required(run_hook, busybox_squashfs):
    out = run_hook("execjob_begin", resources={"container": str(busybox_squashfs)},
                   site={"signatures": {"require": True}})
    _refused(out, "requires signed SIF images")


def test_begin_verifies_signatures_with_the_site_keyring(run_hook, hpccont, busybox_sif,
                                                        tmp_path, shared_tmp):
    """The real ``hpccont verify`` behind the hook: a SIF signed by the site key is accepted,
    an unsigned one and one signed by another key are rejected."""
    signed, unsigned, foreign = (shared_tmp / n for n in ("signed.sif", "unsigned.sif", "foreign.sif"))
    for p in (signed, unsigned, foreign):
        p.write_bytes(busybox_sif.read_bytes())
    for name, image in (("site", signed), ("other", foreign)):
        assert hpccont("key", "newpair", "--out", tmp_path / name).returncode == 0
        assert hpccont("sign", "--key", tmp_path / f"{name}.pem", image).returncode == 0
    site = {"signatures": {"require": True, "keyring": [str(tmp_path / "site.pub.pem")]}}
    out = run_hook("execjob_begin", resources={"container": str(signed)}, site=site)
    assert out["accepted"], out
    _refused(run_hook("execjob_begin", resources={"container": str(unsigned)}, site=site),
             "signature check failed", "no signatures")
    _refused(run_hook("execjob_begin", resources={"container": str(foreign)}, site=site),
             "signature check failed")


def test_begin_rejects_a_corrupt_image(run_hook, shared_tmp):
    bad = shared_tmp / "broken.sif"
    bad.write_bytes(b"\0" * 4096)
    _refused(run_hook("execjob_begin", resources={"container": str(bad)}),
             "not a SIF, squashfs or sandbox image")


@pytest.mark.parametrize("resources, site, fragment", [
    ({"container_mpi": "magic"}, None, "container-mpi must be one of hybrid, bind"),
    ({"container_bind": "/etc/shadow:/x"}, None, "deny list"),
    ({"container_bind": "/srv:/srv"}, {"mounts": {"user_binds": False}}, "does not allow user bind"),
    ({"container_bind": "relative:/x"}, None, "absolute path"),
])
def test_begin_rejects_bad_options(run_hook, busybox_squashfs, resources, site, fragment):
    out = run_hook("execjob_begin", site=site,
                   resources={"container": str(busybox_squashfs), **resources})
    _refused(out, fragment)


def test_begin_requeues_instead_of_deleting_when_configured(run_hook):
    out = run_hook("execjob_begin", resources={"container": "nosuch.sif"},
                   config={"on_reject": "requeue"})
    _refused(out, "not found", delete=False)


def test_broken_hook_config_requeues_the_job(run_hook, install, busybox_squashfs):
    raw = json.dumps({"hpccont": "/usr/bin/hpccont", "pythonpath": [install["lib"]], "jion": True})
    out = run_hook("execjob_begin", resources={"container": str(busybox_squashfs)}, raw_config=raw)
    _refused(out, "unknown key 'jion'", delete=False)
    out = run_hook("execjob_begin", resources={"container": str(busybox_squashfs)},
                   raw_config="{not json")
    _refused(out, "not valid JSON", delete=False)


def test_broken_site_config_requeues_the_job(run_hook, busybox_squashfs):
    out = run_hook("execjob_begin", resources={"container": str(busybox_squashfs)},
                   site={"images": {"allowed_dir": []}})
    _refused(out, "unknown key images.allowed_dir", delete=False)


def test_hook_without_hpccont_on_its_path_requeues(run_hook, busybox_squashfs):
    out = run_hook("execjob_begin", resources={"container": str(busybox_squashfs)},
                   raw_config="{}")
    _refused(out, "hook cannot import hpccont", "pythonpath", delete=False)


def test_other_events_pass_through(run_hook):
    out = run_hook("execjob_prologue", resources={"container": "nosuch.sif"})
    assert out["accepted"] and not out["log"]


# ------------------------------------------------------------------ execjob_launch

def launch(run_hook, image, **kw):
    kw.setdefault("resources", {"container": str(image)})
    out = run_hook("execjob_launch", **kw)
    assert out["accepted"], out
    return out


def test_launch_without_container_leaves_the_task_alone(run_hook):
    out = run_hook("execjob_launch", progname="/bin/bash", argv=["-bash"], env={"A": "1"})
    assert out["accepted"]
    assert (out["progname"], out["argv"]) == ("/bin/bash", ["-bash"])
    assert "HPCCONT_PBS_JOBID" not in out["env"]


def test_launch_wraps_the_job_shell(run_hook, install, busybox_squashfs):
    out = launch(run_hook, busybox_squashfs, progname="/bin/bash", argv=["-bash"], env={"A": "1"})
    assert out["progname"] == install["hpccont"]
    assert out["argv"] == [install["hpccont"], "exec", str(busybox_squashfs), "/bin/bash", "-l"]
    assert out["env"]["A"] == "1" and out["env"]["HPCCONT_PBS_JOBID"] == JOB
    assert out["env"]["PBS_JOBID"] == JOB


@pytest.mark.parametrize("resources, variables, expected", [
    ({"container_bind": "/srv:/data:ro;/opt"}, {}, ["--bind", "/srv:/data:ro", "--bind", "/opt"]),
    ({}, {"HPCCONT_CONTAINER_BIND": "/srv,/opt:/o"}, ["--bind", "/srv", "--bind", "/opt:/o"]),
    ({"container_env": "FOO;BAR"}, {}, ["--env", "FOO=foo value", "--env", "BAR=b,a,r"]),
    ({"container_workdir": "/tmp"}, {}, ["--pwd", "/tmp"]),
    ({}, {"HPCCONT_CONTAINER_WORKDIR": "/scratch"}, ["--pwd", "/scratch"]),
    ({"container_writable_tmpfs": True}, {}, ["--writable-tmpfs"]),
    ({"container_nv": True}, {}, ["--nv"]),
    ({}, {"HPCCONT_CONTAINER_NV": "1"}, ["--nv"]),
    ({"container_nv": False}, {"HPCCONT_CONTAINER_NV": "1"}, []),
    ({"container_mpi": "bind"}, {}, ["--mpi", "bind"]),
    ({}, {"HPCCONT_CONTAINER_MPI": "hybrid"}, ["--mpi", "hybrid"]),
    ({"container_cleanenv": True}, {}, ["--cleanenv"]),
    ({"container_mount_home": False}, {}, ["--no-home"]),
    ({}, {"HPCCONT_CONTAINER_MOUNT_HOME": "no"}, ["--no-home"]),
    ({}, {"HPCCONT_NO_CONTAINER_MOUNT_HOME": "1"}, ["--no-home"]),
    ({"container_mount_home": True}, {}, []),
])
def test_launch_options(run_hook, busybox_squashfs, resources, variables, expected):
    out = launch(run_hook, busybox_squashfs, resources={"container": str(busybox_squashfs), **resources},
                 variables=variables, env={"FOO": "foo value", "BAR": "b,a,r"},
                 progname="/bin/hostname", argv=["hostname"])
    assert option_args(out["argv"], busybox_squashfs) == expected
    assert out["argv"][-1] == "/bin/hostname"


def test_launch_resource_beats_variable(run_hook, busybox_squashfs, busybox_rootfs):
    out = launch(run_hook, busybox_squashfs, resources={"container": str(busybox_squashfs)},
                 variables={"HPCCONT_CONTAINER": str(busybox_rootfs)})
    assert str(busybox_squashfs) in out["argv"] and str(busybox_rootfs) not in out["argv"]


def test_launch_relative_image_from_submit_dir(run_hook, busybox_squashfs, shared_tmp):
    shutil.copy(busybox_squashfs, shared_tmp / "mine.sqsh")
    out = launch(run_hook, None, resources={"container": "mine.sqsh"}, progname="/bin/true",
                 argv=["true"], variables={"PBS_O_WORKDIR": str(shared_tmp)})
    assert out["argv"][2] == str(shared_tmp / "mine.sqsh")


def test_launch_wraps_tm_tasks_on_sister_moms(run_hook, install, busybox_squashfs):
    out = launch(run_hook, busybox_squashfs, in_ms_mom=False, progname="/usr/bin/hostname",
                 argv=["hostname", "-s"], env={"PBS_TASKNUM": "3"})
    assert out["argv"] == [install["hpccont"], "exec", str(busybox_squashfs), "/usr/bin/hostname", "-s"]


def test_launch_tm_task_can_be_left_on_the_host(run_hook, busybox_squashfs):
    out = launch(run_hook, busybox_squashfs, progname="/usr/bin/orted", argv=["orted", "-x"],
                 env={"PBS_TASKNUM": "2"}, config={"wrap_tm_tasks": False, "debug": True})
    assert (out["progname"], out["argv"]) == ("/usr/bin/orted", ["orted", "-x"])
    assert any("TM tasks are not wrapped" in m for _, m in out["log"])
    # ...while the job shell still is wrapped
    out = launch(run_hook, busybox_squashfs, config={"wrap_tm_tasks": False})
    assert out["argv"][1] == "exec"


def test_launch_job_script_can_be_left_on_the_host(run_hook, busybox_squashfs):
    out = launch(run_hook, busybox_squashfs, config={"wrap_job_script": False})
    assert (out["progname"], out["argv"]) == ("/bin/sh", ["-sh"])
    out = launch(run_hook, busybox_squashfs, config={"wrap_job_script": False},
                 env={"PBS_TASKNUM": "2"}, progname="/bin/true", argv=["true"])
    assert out["argv"][1] == "exec"


@pytest.mark.parametrize("progname, argv", [
    ("/usr/bin/hpccont", ["hpccont", "exec", "/other.sif", "prog"]),
    ("/opt/hpccont/bin/container-exec", ["container-exec", "prog"]),
    ("/usr/bin/apptainer", ["apptainer", "run", "x.sif"]),
])
def test_launch_never_wraps_twice(run_hook, busybox_squashfs, progname, argv):
    out = launch(run_hook, busybox_squashfs, progname=progname, argv=argv,
                 env={"PBS_TASKNUM": "5"})
    assert (out["progname"], out["argv"]) == (progname, argv)


def test_launch_rewrap_of_own_output_is_a_no_op(run_hook, busybox_squashfs):
    first = launch(run_hook, busybox_squashfs, progname="/bin/echo", argv=["echo", "hi"])
    again = launch(run_hook, busybox_squashfs, progname=first["progname"], argv=first["argv"],
                   env=first["env"])
    assert (again["progname"], again["argv"]) == (first["progname"], first["argv"])


def test_launch_never_wrap_list(run_hook, busybox_squashfs):
    out = launch(run_hook, busybox_squashfs, progname="/opt/tool/helper", argv=["helper"],
                 config={"never_wrap": ["helper"]})
    assert out["argv"] == ["helper"]


def test_launch_join_key(run_hook, busybox_squashfs):
    out = launch(run_hook, busybox_squashfs, config={"join": True}, progname="/bin/true",
                 argv=["true"])
    assert option_args(out["argv"], busybox_squashfs) == ["--join", "pbs-4242.pbsserver"]


def test_launch_rejects_a_task_image_outside_policy(run_hook, busybox_squashfs, shared_tmp):
    other = shared_tmp / "elsewhere.sqsh"
    shutil.copy(busybox_squashfs, other)
    out = run_hook("execjob_launch", variables={"HPCCONT_CONTAINER": str(busybox_squashfs)},
                   env={"HPCCONT_CONTAINER": str(other), "PBS_TASKNUM": "2"},
                   site={"images": {"allowed_dirs": [str(busybox_squashfs.parent)]}})
    assert out["accepted"] is False and "outside the allowed image directories" in out["reject_msg"]
    assert not out["delete"]           # only execjob_begin deletes jobs


def test_launch_rejects_a_missing_image(run_hook):
    out = run_hook("execjob_launch", resources={"container": "gone.sif"})
    assert out["accepted"] is False and "'gone.sif' not found" in out["reject_msg"]
    assert (out["progname"], out["argv"]) == ("/bin/sh", ["-sh"])


def test_launch_rejects_bad_option(run_hook, busybox_squashfs):
    out = run_hook("execjob_launch", variables={"HPCCONT_CONTAINER": str(busybox_squashfs),
                                                "HPCCONT_CONTAINER_MPI": "pmix"})
    assert out["accepted"] is False and "container-mpi must be one of" in out["reject_msg"]


# ------------------------------------------------------------------ execjob_end

def _leftover(job_id, user=None):
    """A detached process of the job's user carrying the job's marker, as a stray FUSE server
    would."""
    env = dict(os.environ, HPCCONT_PBS_JOBID=job_id)
    user = user or job_user()
    as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} \
        if os.geteuid() == 0 else {}
    p = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True, **as_user)
    return p


def test_end_removes_leftovers(run_hook, tmp_path):
    state = tmp_path / "state"
    (state / "pbs-4242.pbsserver").mkdir(parents=True)
    (state / "pbs-4242.pbsserver.lock").write_text("")
    (state / "pbs-99.pbsserver").mkdir()           # another job: untouched
    mine, other = _leftover(JOB), _leftover("99.pbsserver")
    try:
        out = run_hook("execjob_end", site={"runtime": {"state_dir": str(state)}})
        assert out["accepted"], out
        assert mine.wait(timeout=10) is not None
        assert other.poll() is None
        assert sorted(os.listdir(state)) == ["pbs-99.pbsserver"]
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


@pytest.mark.root
def test_end_detaches_leftover_mounts(run_hook, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    state = tmp_path / "state"
    point = state / "pbs-4242.pbsserver" / "root"
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(point)], check=True)
    try:
        out = run_hook("execjob_end", site={"runtime": {"state_dir": str(state)}})
        assert out["accepted"], out
        with open("/proc/self/mountinfo") as f:
            assert str(point) not in f.read()
        assert not (state / "pbs-4242.pbsserver").exists()
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_end_never_fails_the_job(run_hook):
    out = run_hook("execjob_end", site={"images": {"bogus": 1}})
    assert out["accepted"] and any("bogus" in m for _, m in out["log"])


def test_end_removes_join_state_files(run_hook, busybox_squashfs, tmp_path, test_user):
    from types import SimpleNamespace
    from hpccont.runtime.join import state_name
    state = tmp_path / "state"
    state.mkdir()
    name = state_name(SimpleNamespace(join="pbs-4242.pbsserver",
                                      image=SimpleNamespace(path=str(busybox_squashfs))))
    (state / name).write_text("12345 1\n")
    (state / "join-unrelated").write_text("1 1\n")
    out = run_hook("execjob_end", resources={"container": str(busybox_squashfs)},
                   site={"runtime": {"state_dir": str(state)}})
    assert out["accepted"], out
    assert os.listdir(state) == ["join-unrelated"]
