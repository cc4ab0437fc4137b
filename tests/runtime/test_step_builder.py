"""launcher/step.c on its own, outside Slurm: ``hpccont slurm prepare`` run as the test user by
a shell standing in for slurmstepd, the way the plugin runs it (the same argument layout, the
job's variables in the environment).  The Slurm tests (tests/slurm/test_template.py) show the
same on a real cluster; here what a cluster makes hard to arrange: the parent dying under the
keeper, a bind source changing under a template, and a byte-for-byte comparison of the C
recipe with Python's.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import helpers
from hpccont.schedulers.slurm.recipe import parse_recipe

pytestmark = [pytest.mark.rootless]


@pytest.fixture
def builder(install):
    if install.get("step") is None:
        pytest.skip("no C compiler: hpccont-step is not built")
    return Path(install["step"])


@pytest.fixture
def job(shared_tmp, test_user, busybox_squashfs):
    """A private working directory (part of a template's key) and the step's command lines."""
    cwd = shared_tmp / "job"
    cwd.mkdir()
    data = shared_tmp / "data"
    data.mkdir()
    for d in (cwd, data):
        os.chown(d, test_user.pw_uid, test_user.pw_gid)
    return {"cwd": cwd, "data": data, "image": busybox_squashfs}


def _argv(install, builder, job, step, binds=""):
    opts = [f"hpccont-image={job['image']}"] + ([f"container-bind={binds}"] if binds else [])
    argv = [str(builder), "slurm", "prepare", "--step", step, "--arg",
            f"hpccont={install['hpccont']}"]
    for o in opts:
        argv += ["--opt", o]
    return argv + ["--", "/bin/true"]


def _env(job, step):
    jobid, stepid = step.split(".")
    return {"PWD": str(job["cwd"]), "SLURM_JOB_ID": jobid, "SLURM_JOBID": jobid,
            "SLURM_STEP_ID": stepid, "SLURM_STEPID": stepid, "SLURM_STEP_TASKS_PER_NODE": "2",
            "SLURM_NODEID": "0", "SLURM_SRUN_COMM_PORT": str(40000 + int(jobid))}


def _prepare(install, builder, job, step, binds=""):
    """Run prepare as the plugin would (the builder, argv[0] naming the launcher) from a bash
    that stays, as slurmstepd does (the keeper watches it); returns (recipe fields, that
    shell's Popen: killing it is the step's end)."""
    out = job["cwd"] / f"recipe-{step}"
    argv = _argv(install, builder, job, step, binds)
    script = (f'echo $$ > "{out}.shell"; cd "{job["cwd"]}" && '
              f'(exec -a "{install["hpccont"]}" "{builder}" "$@") > "{out}"; '
              f'echo $? > "{out}.done"; exec sleep 300')
    proc = subprocess.Popen(["runuser", "-u", helpers.TEST_USER, "--", "env", "-i",
                             "PATH=/usr/bin:/bin", f"HOME=/home/{helpers.TEST_USER}"]
                            + [f"{k}={v}" for k, v in _env(job, step).items()]
                            + ["bash", "-c", script, "bash"] + argv[1:], cwd=job["cwd"])
    done = Path(f"{out}.done")
    assert _wait(lambda: done.exists() and done.read_text().strip()), "prepare did not finish"
    assert done.read_text().strip() == "0", f"prepare failed: {done.read_text()}"
    proc.stand_in = int(Path(f"{out}.shell").read_text())     # slurmstepd's part
    return parse_recipe(out.read_bytes()), proc


def _wait(cond, seconds=20.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _templates(test_user):
    d = Path(f"/tmp/hpccont-{test_user.pw_uid}")
    return {p.name: p.stat().st_ino for p in d.glob("step-*")} if d.is_dir() else {}


def _end(shell, recipe):
    """The step's end: the plugin kills the keeper, slurmstepd goes."""
    pid = int(recipe["p"][0])
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    _gone(shell)


def _gone(shell):
    """The stand-in for slurmstepd ends."""
    os.kill(shell.stand_in, signal.SIGKILL)
    shell.wait(timeout=30)


def test_c_recipe_is_pythons_with_the_steps_name(install, builder, job, test_user):
    first, shell = _prepare(install, builder, job, "101.0")
    try:
        assert _comm(int(first["p"][0])) != "hpccont-step", "the first step was built in C"
    finally:
        _end(shell, first)
    second, shell = _prepare(install, builder, job, "102.0")
    try:
        keeper = int(second["p"][0])
        assert _comm(keeper) == "hpccont-step", "the second step was planned by Python"
        # the same recipe, but for the keeper, its start time and the join state files
        # (a C keeper keeps none) and the step's name
        def same(r, name):
            return {k: [v.replace(name, "STEP") for v in vals] for k, vals in r.items()
                    if k not in "ptf"}
        assert same(second, "102.0") == same(first, "101.0")
        assert "HPCCONT_SLURM_STEP=102.0" in second["s"]
        # the keeper's container: the image mounted, the caller's uid inside
        root = Path(f"/proc/{keeper}/root")
        assert (root / "etc" / "hostname").read_text().strip() == "container"
    finally:
        _end(shell, second)


def test_c_keeper_leaves_with_its_parent(install, builder, job, test_user):
    first, shell = _prepare(install, builder, job, "201.0")
    _end(shell, first)
    second, shell = _prepare(install, builder, job, "202.0")
    keeper = int(second["p"][0])
    assert _comm(keeper) == "hpccont-step"
    servers = [p for p in helpers.fuse_processes(str(job["image"]))]
    assert servers, "no FUSE server for the C-built container"
    _gone(shell)          # slurmstepd gone
    assert _wait(lambda: not _alive(keeper)), "the keeper outlived the process it serves"
    assert _wait(lambda: not helpers.fuse_processes(str(job["image"]))), \
        "the FUSE server outlived its keeper"


# A task as the plugin starts one: recipe.c enters the keeper's container and execs.
TASK = r"""
#include <stdio.h>
#include <stdlib.h>
#include "recipe.h"
extern char **environ;
int main(int argc, char **argv)
{
	struct recipe r;
	FILE *f = fopen(argv[1], "rb");
	char *data = malloc(1 << 20);
	size_t len = fread(data, 1, 1 << 20, f);

	(void)argc;
	if (recipe_parse(&r, data, len) != 0)
		return 2;
	recipe_exec(&r, argv + 2, environ);
	return 3;
}
"""


@pytest.fixture
def task_driver(shared_tmp):
    src = shared_tmp / "task.c"
    src.write_text(TASK)
    exe = shared_tmp / "task"
    plugin = helpers.REPO / "spank_plugin"
    r = subprocess.run(["cc", "-std=gnu99", "-Wall", f"-I{plugin}", "-o", str(exe), str(src),
                        str(plugin / "recipe.c")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exe.chmod(0o755)
    return exe


def test_c_keeper_takes_its_tasks_along_when_its_parent_dies(install, builder, job, test_user,
                                                             task_driver):
    """slurmstepd gone mid-step: the keeper kills what runs in its container, then leaves."""
    first, shell = _prepare(install, builder, job, "401.0")
    _end(shell, first)
    second, shell = _prepare(install, builder, job, "402.0")
    keeper = int(second["p"][0])
    assert _comm(keeper) == "hpccont-step"
    guest = subprocess.Popen(["runuser", "-u", helpers.TEST_USER, "--", str(task_driver),
                              str(job["cwd"] / "recipe-402.0"), "/bin/sleep", "300"],
                             cwd=job["cwd"])
    mnt = os.readlink(f"/proc/{keeper}/ns/mnt")

    def in_container():
        return [p for p in os.listdir("/proc") if p.isdigit() and int(p) != keeper
                and _ns(p) == mnt and _comm(int(p)) == "sleep"]
    assert _wait(lambda: in_container()), "the task never entered the container"
    _gone(shell)
    assert _wait(lambda: not _alive(keeper)), "the keeper outlived the process it serves"
    assert _wait(lambda: not in_container()), "a task outlived the keeper"
    guest.wait(timeout=30)
    assert _wait(lambda: not helpers.fuse_processes(str(job["image"])))


def _ns(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def test_a_bind_source_replaced_sends_the_step_back_to_python(install, builder, job, test_user):
    data = job["data"]
    first, shell = _prepare(install, builder, job, "301.0", binds=f"{data}:/data")
    _end(shell, first)
    # the bind's source is now a link elsewhere: the bind policy must judge it again
    other = job["cwd"].parent / "elsewhere"
    other.mkdir()
    os.chown(other, test_user.pw_uid, test_user.pw_gid)
    moved = data.with_name("data-old")
    data.rename(moved)
    data.symlink_to(other)
    before = _templates(test_user)
    second, shell = _prepare(install, builder, job, "302.0", binds=f"{data}:/data")
    try:
        assert _comm(int(second["p"][0])) != "hpccont-step", "C replayed a stale bind"
        assert _templates(test_user) != before, "Python did not record the step again"
    finally:
        _end(shell, second)


def test_run_under_its_own_name_it_refuses_with_one_line(builder):
    """Its fallback is argv[0] (the launcher the plugin names): run as itself, it would exec
    itself for ever."""
    r = subprocess.run([str(builder), "slurm", "prepare", "--step", "5.0", "--", "true"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=10)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "SPANK plugin" in r.stderr
