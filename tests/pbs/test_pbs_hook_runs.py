"""Run what the hook produced: the rewritten progname + argv + env, executed as MoM would.

MoM execs ``progname`` with ``argv`` and ``env`` as the job owner, the job script on stdin.
Here the same triple is executed for real, as root and as the unprivileged test user, and
must run the program inside the busybox image with the job's environment and exit status.
"""
import shutil
import subprocess

import pytest

import helpers

USERS = [pytest.param("root", marks=pytest.mark.root),
         pytest.param(helpers.TEST_USER, marks=pytest.mark.rootless)]


@pytest.fixture(params=["busybox_squashfs", "busybox_sif"])
def image(request):
    return request.getfixturevalue(request.param)


def execute(outcome, user, stdin=None, cwd="/"):
    """exec(progname, argv, env) as ``user``, the way MoM starts the task."""
    assert outcome["accepted"], outcome
    argv, env = outcome["argv"], outcome["env"]
    assert argv[0] == outcome["progname"]
    if user != "root":
        argv = [shutil.which("runuser"), "-u", user, "--", "/usr/bin/env", "-i"] + \
            [f"{k}={v}" for k, v in env.items()] + argv
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture
def job(run_hook, test_user, shared_tmp):
    """run_hook for a job owned by ``user``: the task environment MoM would build."""
    def launch(user, image, **kw):
        home = "/root" if user == "root" else test_user.pw_dir
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "USER": user, "LOGNAME": user,
               "A": "from the job"}
        env.update(kw.pop("env", {}))
        kw.setdefault("resources", {"container": str(image)})
        return run_hook("execjob_launch", env=env, **kw)
    return launch


@pytest.mark.parametrize("user", USERS)
def test_job_script_runs_inside_the_image(job, image, user):
    out = job(user, image, progname="/bin/sh", argv=["-sh"])
    r = execute(out, user, stdin="cat /etc/hostname\necho \"A=$A job=$PBS_JOBID\"\nexit 7\n")
    assert r.returncode == 7, r.stderr
    assert r.stdout.splitlines() == ["container", "A=from the job job=4242.pbsserver"]


@pytest.mark.parametrize("user", USERS)
def test_tm_task_runs_inside_the_image(job, busybox_squashfs, user):
    out = job(user, busybox_squashfs, in_ms_mom=False, env={"PBS_TASKNUM": "2"},
              progname="/bin/sh", argv=["sh", "-c", "echo task $PBS_TASKNUM on $(cat /etc/hostname); exit 3"])
    r = execute(out, user)
    assert (r.returncode, r.stdout.strip()) == (3, "task 2 on container"), r.stderr


@pytest.mark.parametrize("user", USERS)
def test_options_take_effect(job, busybox_squashfs, shared_tmp, user):
    data = shared_tmp / "data"
    data.mkdir()
    (data / "input.txt").write_text("host data\n")
    data.chmod(0o755)
    script = ("pwd; cat /mnt/in/input.txt; touch /made-by-job && echo writable; "
              "echo \"FOO=$FOO BAR=${BAR-unset}\"")
    out = job(user, busybox_squashfs, progname="/bin/sh", argv=["sh", "-c", script],
              resources={"container": str(busybox_squashfs), "container_bind": f"{data}:/mnt/in:ro",
                         "container_workdir": "/tmp", "container_writable_tmpfs": True,
                         "container_cleanenv": True, "container_env": "FOO"},
              env={"FOO": "kept", "BAR": "dropped"})
    r = execute(out, user)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["/tmp", "host data", "writable", "FOO=kept BAR=unset"]


@pytest.mark.parametrize("user", USERS)
def test_without_writable_tmpfs_the_image_is_read_only(job, busybox_squashfs, user):
    out = job(user, busybox_squashfs, progname="/bin/sh", argv=["sh", "-c", "touch /nope"])
    r = execute(out, user)
    assert r.returncode == 1 and "Read-only file system" in r.stderr, r.stderr


@pytest.mark.parametrize("user", USERS)
def test_missing_program_in_image_is_127(job, busybox_squashfs, user):
    out = job(user, busybox_squashfs, progname="/opt/app/bin/solver", argv=["solver"])
    r = execute(out, user)
    assert r.returncode == 127 and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("user", USERS)
def test_end_after_a_real_job_leaves_nothing(job, run_hook, busybox_squashfs, user):
    out = job(user, busybox_squashfs, progname="/bin/true", argv=["true"])
    assert execute(out, user).returncode == 0
    end = run_hook("execjob_end", euser=user)
    assert end["accepted"] and not [m for _, m in end["log"] if "cleanup" in m]
    assert not helpers.mounts_mentioning(str(busybox_squashfs))
    assert not helpers.fuse_processes(str(busybox_squashfs))


@pytest.mark.parametrize("user", USERS)
def test_joined_tasks_share_a_container_and_end_cleans_up(job, run_hook, busybox_squashfs, user):
    from hpccont.schedulers.pbs import leftover_pids
    script = "readlink /proc/self/ns/mnt; sleep 1"
    outs = [job(user, busybox_squashfs, progname="/bin/sh", argv=["sh", "-c", script],
                config={"join": True}, env={"PBS_TASKNUM": str(n)}) for n in (2, 3)]
    assert all("--join" in o["argv"] for o in outs)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:          # both tasks alive at once, as MPI ranks are
        results = list(pool.map(lambda o: execute(o, user), outs))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert results[0].stdout == results[1].stdout      # same mount namespace
    end = run_hook("execjob_end", resources={"container": str(busybox_squashfs)}, euser=user)
    assert end["accepted"], end
    assert leftover_pids("4242.pbsserver") == []
    assert not helpers.fuse_processes(str(busybox_squashfs))
