"""srun / sbatch / salloc with --container on a real cluster, submitted by the user hpcuser.

The busybox image's /etc/hostname says "container", the second image's says "other"; the host's
says neither, so reading it tells where a task ran.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import helpers

pytestmark = [pytest.mark.slurm, pytest.mark.rootless, pytest.mark.timeout(300)]


@pytest.fixture(scope="session")
def other_image(images):
    return images["other"]


def _lines(r):
    return [line for line in r.stdout.splitlines() if line.strip()]


def _ok(r):
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:{r.stdout}\nstderr:{r.stderr}"
    return r


# -- srun ------------------------------------------------------------------------------------------
def test_srun_one_task(submit, images, test_user):
    r = _ok(submit("srun", f"--container={images['sqsh']}", "sh", "-c",
                   "cat /etc/hostname; id -u; echo $HPCCONT_SLURM_STEP"))
    host, uid, step = _lines(r)
    assert host == "container"
    assert uid == str(test_user.pw_uid)
    assert re.fullmatch(r"\d+\.0", step)


def test_srun_many_tasks_share_one_container(submit, images):
    r = _ok(submit("srun", "-n", "8", "--overcommit", f"--container={images['sqsh']}", "sh", "-c",
                   'echo "$SLURM_PROCID $(cat /etc/hostname) $(readlink /proc/self/ns/mnt)"'))
    rows = [line.split() for line in _lines(r)]
    assert sorted(int(p) for p, _, _ in rows) == list(range(8))
    assert {h for _, h, _ in rows} == {"container"}
    assert len({ns for _, _, ns in rows}) == 1, "tasks of one step on one node share a mount ns"


def test_plugin_option_and_site_image_name(submit, images):
    r = _ok(submit("srun", f"--hpccont-image={images['name']}", "cat", "/etc/hostname"))
    assert _lines(r) == ["container"]


def test_relative_path_against_submit_dir(submit, images):
    r = _ok(submit("srun", "--container=busybox.sqsh", "cat", "/etc/hostname", cwd=images["dir"]))
    assert _lines(r) == ["container"]


def test_environment_variable_form(submit, images):
    r = _ok(submit("srun", "cat", "/etc/hostname", env={"HPCCONT_CONTAINER": str(images["sqsh"])}))
    assert _lines(r) == ["container"]
    r = _ok(submit("srun", "--container=none", "cat", "/etc/hostname",
                   env={"HPCCONT_CONTAINER": str(images["sqsh"])}))
    assert _lines(r) == [Path("/etc/hostname").read_text().strip()]


def test_without_option_nothing_changes(submit):
    r = _ok(submit("srun", "sh", "-c", "cat /etc/hostname; echo ${HPCCONT_SLURM_STEP:-unset}"))
    assert _lines(r) == [Path("/etc/hostname").read_text().strip(), "unset"]


def test_export_none_still_gets_the_container(submit, images):
    r = _ok(submit("srun", "--export=NONE", f"--container={images['sqsh']}", "/bin/cat",
                   "/etc/hostname"))
    assert _lines(r) == ["container"]


def _client_reexecs(submit, shared_tmp, *argv, **kw):
    """srun under strace as the user: its result, and how often the client exec'd itself again
    (the cli_filter's route (a), /proc/self/exe with the option renamed)."""
    trace = shared_tmp / f"srun-execs-{time.monotonic_ns()}.txt"
    r = submit("strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "srun", *argv, **kw)
    calls = trace.read_text().splitlines() if trace.exists() else []
    return r, sum('execve("/proc/self/exe"' in line for line in calls)


def test_plain_srun_is_not_re_executed(submit, images, shared_tmp):
    """The cli_filter's route (b) carries the image to a plain srun's step through the
    environment: the client starts once, and the task still runs in the image."""
    r, reexecs = _client_reexecs(submit, shared_tmp, f"--container={images['sqsh']}",
                                 "cat", "/etc/hostname")
    assert _lines(_ok(r)) == ["container"]
    assert reexecs == 0, r.stderr


def test_srun_re_executed_where_the_environment_cannot_carry_the_image(submit, images,
                                                                         shared_tmp, slurm_cluster):
    """--export=NONE (or SLURM_EXPORT_ENV=NONE) keeps the client's environment from the step,
    and an oci.conf beside slurm.conf means nodes that would act on Slurm's own (blanked)
    container value: each takes route (a), and still runs in the image."""
    r, reexecs = _client_reexecs(submit, shared_tmp, "--export=NONE",
                                 f"--container={images['sqsh']}", "/bin/cat", "/etc/hostname")
    assert (_lines(_ok(r)), reexecs) == (["container"], 1), r.stderr
    r, reexecs = _client_reexecs(submit, shared_tmp, f"--container={images['sqsh']}",
                                 "/bin/cat", "/etc/hostname", env={"SLURM_EXPORT_ENV": "NONE"})
    assert (_lines(_ok(r)), reexecs) == (["container"], 1), r.stderr
    oci = slurm_cluster.etc / "oci.conf"
    oci.write_text("# Slurm's OCI runtime settings would be here\n")
    oci.chmod(0o644)
    try:
        r, reexecs = _client_reexecs(submit, shared_tmp, f"--container={images['sqsh']}",
                                     "cat", "/etc/hostname")
    finally:
        oci.unlink()
    assert (_lines(_ok(r)), reexecs) == (["container"], 1), r.stderr


def test_relative_image_found_where_srun_was_typed(submit, images, shared_tmp):
    """Inside a job submitted elsewhere, an srun with --chdir elsewhere still finds a relative
    image in the directory it was typed in (HPCCONT_SLURM_CWD, set on either route)."""
    script = (f"#!/bin/sh\ncd {images['dir']}\n"
              "srun --chdir=/ --container=busybox.sqsh cat /etc/hostname\n")
    r, out = _sbatch_wait(submit, shared_tmp, script, name="typed-here.sh")
    assert r.returncode == 0, r.stderr + out
    assert out.split() == ["container"], out


def test_container_options_reach_the_runtime(submit, images, shared_tmp):
    (shared_tmp / "data").mkdir()
    (shared_tmp / "data" / "f").write_text("bound\n")
    r = _ok(submit("srun", f"--container={images['sqsh']}",
                   f"--container-bind={shared_tmp}/data:/mnt/data:ro", "--container-workdir=/mnt/data",
                   "--container-env=FOO", "--container-cleanenv", "sh", "-c",
                   'cat f; pwd; echo "foo=$FOO bar=${BAR:-unset}"',
                   env={"FOO": "1", "BAR": "2"}))
    assert _lines(r) == ["bound", "/mnt/data", "foo=1 bar=unset"]


def test_exit_status_passes_through(submit, images):
    r = submit("srun", f"--container={images['sqsh']}", "sh", "-c", "exit 7")
    assert r.returncode == 7
    r = submit("srun", f"--container={images['sqsh']}", "/no/such/program")
    assert r.returncode != 0


def test_mpi_environment_reaches_tasks(submit, images):
    for mpi, var in (("pmix", "PMIX_RANK"), ("pmi2", "PMI_FD")):
        r = _ok(submit("srun", f"--mpi={mpi}", "-n", "2", f"--container={images['sqsh']}", "sh", "-c",
                       f'cat /etc/hostname; echo "{var}=${{{var}:-missing}}"'))
        out = _lines(r)
        assert out.count("container") == 2
        assert not any(line.endswith("=missing") for line in out), out


# -- process tracking ------------------------------------------------------------------------------
def test_tasks_stay_in_the_step_cgroup(submit, images, slurm_cluster):
    r = _ok(submit("srun", "-n", "2", f"--container={images['sqsh']}", "sh", "-c",
                   'echo "$SLURM_JOB_ID $$ $(grep freezer /proc/self/cgroup)"; sleep 1'))
    for line in _lines(r):
        job, pid, cgroup = line.split()
        assert cgroup.endswith(f"/job_{job}/step_0"), cgroup


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _background_step(submit, image, shared_tmp, body="exec sleep 300", ntasks=1):
    """sbatch a job whose step runs ``body`` in the container after writing each task's PID to
    a file; returns (job id, [task PIDs]) once every task has started."""
    script = shared_tmp / "step.sh"
    script.write_text("#!/bin/sh\nsrun -n %d --overcommit --container=%s sh -c "
                      "'echo $$ >> %s/pids; %s'\n" % (ntasks, image, shared_tmp, body))
    job = _ok(submit("sbatch", "--parsable", "-o", f"{shared_tmp}/step.out", str(script)))
    job = job.stdout.strip().split(";")[0]
    pids = shared_tmp / "pids"
    started = _wait_for(lambda: pids.exists() and len(pids.read_text().split()) == ntasks)
    assert started, f"the step never started: {(shared_tmp / 'step.out').read_text()}"
    return job, [int(p) for p in pids.read_text().split()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (PID 1 may be slow to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _no_fuse_server_left(image) -> bool:
    return _wait_for(lambda: not helpers.fuse_processes(str(image)), 10)


def _keeper_and_fuse(image):
    fuse = helpers.fuse_processes(str(image))
    assert len(fuse) == 1, fuse
    keeper = int(Path(f"/proc/{fuse[0][0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return keeper, fuse[0][0]


def test_listpids_and_scancel(submit, images, slurm_cluster, shared_tmp):
    job, (pid,) = _background_step(submit, images["sqsh"], shared_tmp)
    assert f"/job_{job}/step_0" in Path(f"/proc/{pid}/cgroup").read_text()
    listed = slurm_cluster.run(["scontrol", "listpids", f"{job}.0"]).stdout.split()
    assert str(pid) in listed
    _ok(submit("scancel", job))
    assert _wait_for(lambda: not _running(pid)), "task survived scancel"
    assert _no_fuse_server_left(images["sqsh"]), "image still mounted after scancel"


def test_signal_reaches_the_task(submit, images, slurm_cluster, shared_tmp):
    """scancel --signal delivers to the process inside the container."""
    job, _ = _background_step(submit, images["sqsh"], shared_tmp,
                              body='trap "echo got-USR1; exit 0" USR1; while :; do sleep 0.1; done')
    _ok(submit("scancel", "--signal=USR1", f"{job}.0"))
    out = shared_tmp / "step.out"
    got = _wait_for(lambda: out.exists() and "got-USR1" in out.read_text())
    if not got:
        submit("scancel", job)
    assert got, f"signal did not reach the task: {out.read_text() if out.exists() else ''!r}"


# -- sbatch / salloc -------------------------------------------------------------------------------
def _sbatch_wait(submit, shared_tmp, script_text, *opts, name="job.sh", **kw):
    script = shared_tmp / name
    script.write_text(script_text)
    out = shared_tmp / (name + ".out")
    r = submit("sbatch", "--wait", "-o", str(out), *opts, str(script), **kw)
    text = out.read_text() if out.exists() else ""
    return r, text


def test_sbatch_option_on_command_line(submit, images, shared_tmp):
    r, out = _sbatch_wait(submit, shared_tmp, "#!/bin/sh\ncat /etc/hostname\n",
                          f"--container={images['sqsh']}")
    assert r.returncode == 0, r.stderr + out
    assert out.split() == ["container"]


def test_sbatch_option_in_script(submit, images, shared_tmp):
    r, out = _sbatch_wait(submit, shared_tmp,
                          f"#!/bin/sh\n#SBATCH --container={images['sqsh']}\ncat /etc/hostname\n")
    assert r.returncode == 0, r.stderr + out
    assert out.split() == ["container"]


def test_nested_srun_inherits_overrides_and_opts_out(submit, images, other_image, shared_tmp,
                                                     plugstack):
    # The batch script on the host (wrap_batch=no), so that it can run the host's srun.
    plugstack(wrap_batch="no")
    script = ("#!/bin/sh\ncat /etc/hostname\nsrun cat /etc/hostname\n"
              f"srun --container={other_image} cat /etc/hostname\n"
              "srun --container=none cat /etc/hostname\n")
    r, out = _sbatch_wait(submit, shared_tmp, script, f"--container={images['sqsh']}")
    assert r.returncode == 0, r.stderr + out
    host = Path("/etc/hostname").read_text().strip()
    assert out.split() == [host, "container", "other", host]


def test_salloc_steps_inherit(submit, images):
    r = _ok(submit("salloc", f"--container={images['sqsh']}", "srun", "cat", "/etc/hostname"))
    assert "container" in _lines(r)


# -- bad input: one clear line, the step fails, nothing runs outside -------------------------------
def _one_error_line(r, fragment):
    errors = [line for line in r.stderr.splitlines() if line.startswith("hpccont")]
    assert r.returncode != 0, r.stdout
    assert len(errors) == 1, r.stderr
    assert fragment in errors[0], errors[0]
    assert "ran-outside" not in r.stdout


def test_missing_image(submit):
    r = submit("srun", "-n", "4", "--overcommit", "--container=/nonexistent/x.sif", "echo", "ran-outside")
    _one_error_line(r, "container image '/nonexistent/x.sif' not found")


def test_unreadable_image(submit, world_tmp, busybox_squashfs):
    secret = world_tmp / "secret.sqsh"
    secret.write_bytes(busybox_squashfs.read_bytes())
    secret.chmod(0o600)
    r = submit("srun", f"--container={secret}", "echo", "ran-outside")
    _one_error_line(r, "permission denied")


def test_not_an_image(submit, shared_tmp):
    junk = shared_tmp / "junk.sif"
    junk.write_text("not an image\n")
    junk.chmod(0o644)
    r = submit("srun", f"--container={junk}", "echo", "ran-outside")
    _one_error_line(r, "not a SIF, squashfs")


def test_bad_bind_spec(submit, images):
    r = submit("srun", f"--container={images['sqsh']}", "--container-bind=/no/such/dir:/x",
               "echo", "ran-outside")
    assert r.returncode != 0
    assert "ran-outside" not in r.stdout
    assert "/no/such/dir" in r.stderr


def test_bad_mpi_mode(submit, images):
    r = submit("srun", f"--container={images['sqsh']}", "--container-mpi=fast", "echo", "ran-outside")
    _one_error_line(r, "--container-mpi must be one of")


@pytest.mark.parametrize("opts,word", [
    (["--container="], "empty image"),                          # --container=$IMG, IMG unset
    (["--container", ""], "empty image"),
    (["--container={img}", "--container={other}"], "two different images"),
    (["--container={img}", "--container-bind=/tmp:"], "empty destination"),
    (["--container={img}", "--container-env=FOO,"], "--container-env: empty item"),
    (["--container={img}", "--container-mount-home", "--no-container-mount-home"],
     "contradict"),
])
def test_bad_options_never_run_on_the_host(submit, images, opts, word):
    """Pyxis's behaviour is the reference: each is refused with one line naming the option."""
    argv = [o.format(img=images["sqsh"], other=images["other"]) for o in opts]
    r = submit("srun", *argv, "echo", "ran-outside")
    assert r.returncode != 0
    assert "ran-outside" not in r.stdout
    mine = [x for x in r.stderr.splitlines() if x.startswith("hpccont")]
    assert len(mine) == 1 and word in mine[0], r.stderr


def test_container_option_without_image_warns_once(submit):
    r = submit("srun", "--container-nv", "echo", "ran")
    assert r.returncode == 0 and r.stdout.split() == ["ran"]
    warnings = [x for x in r.stderr.splitlines() if "no effect without --container" in x]
    assert len(warnings) == 1 and "--container-nv" in warnings[0], r.stderr


def test_container_env_host_value_wins_over_the_image(submit, shared_tmp, world_tmp):
    """--container-env=NAME: the task's own value wins over the image's %environment, in
    lone and shared (prepared) containers alike."""
    root = helpers.make_busybox_rootfs(world_tmp / "envimg-rootfs")
    env_dir = root / ".singularity.d" / "env"
    env_dir.mkdir(parents=True, exist_ok=True)
    (env_dir / "90-environment.sh").write_text("export FOO=from-image\n")
    img = helpers.mksquashfs(root, world_tmp / "envimg.sqsh")
    img.chmod(0o644)
    for n in ("1", "2"):
        r = submit("srun", "-n", n, f"--container={img}", "--container-env=FOO", "sh", "-c",
                   "echo $FOO", env={"FOO": "from-host"})
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["from-host"] * int(n), (n, r.stdout)
    r = submit("srun", f"--container={img}", "sh", "-c", "echo $FOO", env={"FOO": "from-host"})
    assert r.stdout.split() == ["from-image"]      # without the option, the image's value


def test_broken_plugin_path_never_runs_unwrapped(submit, images, plugstack):
    plugstack(hpccont="/nonexistent/hpccont")
    r = submit("srun", f"--container={images['sqsh']}", "echo", "ran-outside")
    assert r.returncode != 0
    assert "ran-outside" not in r.stdout
    assert "cannot execute /nonexistent/hpccont" in r.stderr


def test_oci_bundle_left_to_slurm(submit, shared_tmp):
    bundle = shared_tmp / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    r = submit("srun", f"--container={bundle}", "echo", "hi")
    # No oci.conf on this cluster: Slurm itself refuses; hpccont never saw the value.
    assert "hpccont" not in r.stderr


# -- accounting ------------------------------------------------------------------------------------
def test_accounting_records_image_and_digest(submit, busybox_sif, world_tmp, slurm_cluster,
                                             hpccont):
    import hashlib
    sif = world_tmp / "acct.sif"
    sif.write_bytes(busybox_sif.read_bytes())
    sif.chmod(0o644)
    r = _ok(submit("srun", f"--container={sif}", "sh", "-c", "echo $SLURM_JOB_ID"))
    job = _lines(r)[-1]
    want = hashlib.sha256(sif.read_bytes()).hexdigest()
    mine = helpers.accounting_records(slurm_cluster.accounting, lambda x: x["job"] == job)
    assert len(mine) == 1
    assert mine[0]["image"] == str(sif) and mine[0]["sha256"] == want and mine[0]["step"] == "0"
    assert mine[0]["user"] == "hpcuser" and mine[0]["kind"] == "sif"
    st = os.stat(slurm_cluster.accounting)
    assert st.st_uid == 0 and not st.st_mode & 0o002
    listed = hpccont("slurm", "jobs", "--all", "--json", "--log", slurm_cluster.accounting,
                     env=slurm_cluster.env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert any(x["job"] == job and x["sha256"] == want for x in rows)
    # The job's AdminComment carries the image too (squeue --json shows it while the job is known).
    assert helpers.admin_comment(slurm_cluster, job) == f"hpccont:{sif}@sha256:{want}"
    # The same step again: its entry comes from root's template of the first (launcher/account.c,
    # which only reads the template; Python's account rewrites it), and says the same.
    templates = sorted(Path(f"{slurm_cluster.accounting}.templates").glob("account-*"),
                       key=lambda p: p.stat().st_mtime_ns)
    assert templates, "no accounting template was recorded"
    before = {p: p.stat().st_ino for p in templates}
    again = _lines(_ok(submit("srun", f"--container={sif}", "sh", "-c", "echo $SLURM_JOB_ID")))[-1]
    second = helpers.accounting_records(slurm_cluster.accounting, lambda x: x["job"] == again)
    assert len(second) == 1
    assert {k: v for k, v in second[0].items() if k not in ("job", "time")} == \
        {k: v for k, v in mine[0].items() if k not in ("job", "time")}
    assert {p: p.stat().st_ino for p in templates if p.exists()} == before, \
        "the second entry was written by Python again"
    assert helpers.admin_comment(slurm_cluster, again) == f"hpccont:{sif}@sha256:{want}"


# -- the step's container, entered by the plugin in C ----------------------------------------------
# A task that went through Python holds the join ``.guests`` lock through its exec; a task the
# plugin put into the prepared container holds no such descriptor.
_TASK_PROBE = ('echo "$SLURM_PROCID $SLURM_JOB_ID $(readlink /proc/self/ns/mnt) $$ '
               '$(grep freezer /proc/self/cgroup | cut -d: -f3) '
               '$(ls -l /proc/$$/fd | grep -c guests) ${HPCCONT_IMAGE_PATH:-none}"')


def _user_processes(test_user, image):
    """The user's processes that name ``image`` (the keeper's and the FUSE server's command
    lines do; other tests may run processes of the same user meanwhile)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == test_user.pw_uid:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if str(image) in cmd:
                    out.append(cmd)
        except OSError:
            continue
    return out


def _nothing_left(test_user, image, step=None):
    """No process of the user (keeper, FUSE server, task) and no join state after a step."""
    for _ in range(50):
        left = _user_processes(test_user, image)
        if not left and not helpers.fuse_processes(str(image)):
            break
        time.sleep(0.2)
    assert not left, f"left running after the step: {left}"
    dirs = [Path(f"/tmp/hpccont-{test_user.pw_uid}"), Path(f"/run/user/{test_user.pw_uid}") /
            f"hpccont-{test_user.pw_uid}"]
    if step is None:
        return
    from types import SimpleNamespace
    from hpccont.runtime.join import state_name
    name = state_name(SimpleNamespace(join=step, image=SimpleNamespace(path=str(image))))
    state = [p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.name.startswith(name)]
    assert not state, f"join state left: {state}"


def test_prepared_container_shared_by_eight_tasks(submit, images, test_user):
    r = _ok(submit("srun", "-n", "8", "--overcommit", f"--container={images['sqsh']}",
                   "sh", "-c", _TASK_PROBE))
    rows = [[line.split()[0]] + line.split()[2:] for line in _lines(r)]
    job = _lines(r)[0].split()[1]
    assert sorted(int(row[0]) for row in rows) == list(range(8))
    assert len({row[1] for row in rows}) == 1, "one mount namespace for the step"
    assert len({row[2] for row in rows}) == 8
    job_steps = {row[3] for row in rows}
    assert len(job_steps) == 1 and job_steps.pop().endswith("/step_0"), rows
    assert {row[4] for row in rows} == {"0"}, "tasks went through Python, not the plugin"
    assert {row[5] for row in rows} == {str(images["sqsh"])}
    _nothing_left(test_user, images["sqsh"], f"{job}.0")


def test_prepared_container_keeper_is_in_the_step_cgroup(submit, images, shared_tmp):
    """The keeper and its FUSE server start before the tasks, from slurmstepd; the plugin moves
    them into the step's cgroups (memory, cpu...) so that the step's limits and accounting
    cover them; not the freezer, which proctrack waits on (see stepd_side.c adopt())."""
    job, _ = _background_step(submit, images["sqsh"], shared_tmp, ntasks=2)
    try:
        for pid in _keeper_and_fuse(images["sqsh"]):
            memory = [line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                      if ":memory:" in line]
            assert memory and f"/job_{job}/step_0/" in memory[0], (pid, memory)
    finally:
        _ok(submit("scancel", job))
    assert _no_fuse_server_left(images["sqsh"]), "FUSE server survived scancel"


def test_keeper_leaves_when_slurmstepd_dies(submit, images, shared_tmp, slurm_cluster):
    """A crashed slurmstepd must not leave the step's container behind: the keeper watches it."""
    job, tasks = _background_step(submit, images["sqsh"], shared_tmp, ntasks=2)
    keeper, _ = _keeper_and_fuse(images["sqsh"])
    stepd = subprocess.run(["pgrep", "-f", f"slurmstepd: \\[{job}.0\\]"], capture_output=True,
                           text=True).stdout.split()
    assert len(stepd) == 1, stepd
    try:
        os.kill(int(stepd[0]), signal.SIGKILL)
        assert _wait_for(lambda: not _running(keeper), 10), "keeper outlived slurmstepd"
        assert _no_fuse_server_left(images["sqsh"]), "FUSE server outlived slurmstepd"
    finally:
        for pid in tasks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        submit("scancel", job)


def test_step_keeper_killed_mid_step(submit, images, shared_tmp, test_user):
    """kill -9 of the step's keeper while its tasks read the image: the FUSE server goes with it
    (PR_SET_PDEATHSIG), the tasks see the image go and end, the plugin's step exit removes the
    join state; nothing stays mounted or running, and the next step starts a new container."""
    # a new absent name each round reaches the server (what it has served, the kernel keeps)
    body = ("i=0; while cat /etc/hostname >/dev/null; do i=$((i+1)); ls /etc/absent-$i 2>&1 | "
            "grep connected >&2 && break; sleep 0.05; done; echo image-gone; exit 7")
    job, tasks = _background_step(submit, images["sqsh"], shared_tmp, body=body, ntasks=2)
    keeper, fuse = _keeper_and_fuse(images["sqsh"])
    os.kill(keeper, signal.SIGKILL)
    assert _wait_for(lambda: not any(_running(p) for p in tasks)), "tasks outlived their image"
    assert _no_fuse_server_left(images["sqsh"]), "FUSE server outlived its keeper"
    assert _wait_for(lambda: job not in slurm_jobs(submit)), "the job did not end"
    assert (shared_tmp / "step.out").read_text().count("image-gone") == 2
    _nothing_left(test_user, images["sqsh"], f"{job}.0")
    r = _ok(submit("srun", "-n", "2", f"--container={images['sqsh']}", "cat", "/etc/hostname"))
    assert _lines(r) == ["container", "container"]


def slurm_jobs(submit) -> list:
    return submit("squeue", "-h", "-o", "%i").stdout.split()


def test_prepared_container_exit_status_of_one_task(submit, images, test_user):
    r = submit("srun", "-n", "8", "--overcommit", f"--container={images['sqsh']}", "sh", "-c",
               'test "$SLURM_PROCID" = 5 && exit 7; exit 0')
    assert r.returncode == 7, r.stderr
    _nothing_left(test_user, images["sqsh"])


def test_prepared_container_options(submit, images, shared_tmp, test_user):
    (shared_tmp / "bound.txt").write_text("bound\n")
    r = _ok(submit("srun", "-n", "4", "--overcommit", f"--container={images['sqsh']}",
                   "--container-cleanenv", "--container-env=SLURM_PROCID,MYVAR",
                   f"--container-bind={shared_tmp}:/mnt", "sh", "-c",
                   'echo "$SLURM_PROCID ${SLURM_LOCALID:-unset} $MYVAR $(cat /mnt/bound.txt) '
                   '$HOME $(ls -l /proc/$$/fd | grep -c guests)"',
                   env={"MYVAR": "mine", "HPCCONT_ENV_INJ": "x"}))
    rows = sorted(line.split() for line in _lines(r))
    assert rows == [[str(i), "unset", "mine", "bound", test_user.pw_dir, "0"] for i in range(4)]


def test_prepared_container_image_env_scripts(submit, world_tmp, test_user):
    root = helpers.make_busybox_rootfs(world_tmp / "envscript-rootfs")
    (root / ".singularity.d" / "env").mkdir(parents=True, exist_ok=True)
    (root / ".singularity.d" / "env" / "90-test.sh").write_text(
        "export FROM_IMAGE=yes\nexport OVERRIDDEN=image\n")
    image = helpers.mksquashfs(root, world_tmp / "envscript.sqsh")
    image.chmod(0o644)
    r = _ok(submit("srun", "-n", "3", "--overcommit", f"--container={image}", "sh", "-c",
                   'echo "$SLURM_PROCID $FROM_IMAGE $OVERRIDDEN $(ls -l /proc/$$/fd | grep -c guests)"',
                   env={"HPCCONT_ENV_OVERRIDDEN": "user"}))
    assert sorted(_lines(r)) == [f"{i} yes user 0" for i in range(3)]


def test_prepared_container_missing_command(submit, images, test_user):
    r = submit("srun", "-n", "4", "--overcommit", f"--container={images['sqsh']}", "no-such-cmd")
    assert r.returncode == 127
    lines = [line for line in r.stderr.splitlines() if "no-such-cmd" in line]
    assert lines == ["hpccont: no-such-cmd: command not found in the container"] * 4, r.stderr
    _nothing_left(test_user, images["sqsh"])


def test_prepared_container_scancel(submit, images, slurm_cluster, shared_tmp, test_user):
    script = shared_tmp / "long8.sh"
    script.write_text("#!/bin/sh\nsrun -n 8 --overcommit --container=%s sh -c "
                      "'echo $$ >> %s/pids8; exec sleep 300'\n" % (images["sqsh"], shared_tmp))
    r = _ok(submit("sbatch", "--parsable", "--overcommit", "-n", "8", "-o",
                   f"{shared_tmp}/out8", str(script)))
    job = r.stdout.strip().split(";")[0]
    pidfile = shared_tmp / "pids8"
    for _ in range(150):
        if pidfile.exists() and len(pidfile.read_text().split()) == 8:
            break
        time.sleep(0.2)
    pids = pidfile.read_text().split()
    assert len(pids) == 8
    listed = slurm_cluster.run(["scontrol", "listpids", f"{job}.0"]).stdout.split()
    assert set(pids) <= set(listed)
    _ok(submit("scancel", job))
    _nothing_left(test_user, images["sqsh"])
