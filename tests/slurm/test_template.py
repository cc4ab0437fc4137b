"""Step templates: the second step with the same inputs gets its container from launcher/step.c,
built in C from what the first step's Python prepare recorded (schedulers/slurm/template.py).

Which path built a step's container is told by the template file: Python's prepare rewrites
it (a new file, renamed into place) each time it plans a step it can record; a step built in
C only reads it.  The tasks' view (ids, directory, environment, mounts) must be the same
either way.
"""
import os
import shutil
import time
from pathlib import Path

import pytest

import helpers
from hpccont.schedulers.slurm import template

pytestmark = [pytest.mark.slurm, pytest.mark.rootless, pytest.mark.timeout(300)]

# What a task sees, one item per line; the mount table without the numbers each mount gets.
# (The job's id first: the step's own name, e.g. in HPCCONT_SLURM_STEP, differs by design.)
PROBE = ("echo $SLURM_JOB_ID; id; pwd; env | grep -v -e '^SLURM_' -e '^_=' | sort; echo mounts; "
         "awk '{print $5, $6, $(NF-2)}' /proc/self/mountinfo")


@pytest.fixture
def builder(install):
    if install.get("step") is None:
        pytest.skip("no C compiler: hpccont-step is not built")


def _templates(test_user) -> dict:
    """step-* files of the user: name -> (inode, mtime_ns)."""
    out = {}
    for d in (f"/tmp/hpccont-{test_user.pw_uid}", f"/run/user/{test_user.pw_uid}/hpccont-{test_user.pw_uid}"):
        if os.path.isdir(d):
            for p in Path(d).glob("step-*"):
                st = p.stat()
                out[str(p)] = (st.st_ino, st.st_mtime_ns)
    return out


def _workdir(shared_tmp, test_user, name) -> Path:
    """A directory of its own per test: the working directory is part of a template's key."""
    d = shared_tmp / name
    d.mkdir()
    os.chown(d, test_user.pw_uid, test_user.pw_gid)
    return d


def _named(probe: str) -> str:
    job, rest = probe.split("\n", 1)
    return rest.replace(f"{job}.0", "JOB.STEP")


def _run(submit, image, cwd, *argv):
    r = submit("srun", "-n", "1", f"--container={image}", *argv, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_second_step_is_built_in_c_and_sees_the_same(builder, submit, images, test_user, shared_tmp):
    cwd = _workdir(shared_tmp, test_user, "tpl-same")
    before = _templates(test_user)
    first = _run(submit, images["sqsh"], cwd, "sh", "-c", PROBE)
    recorded = {p: v for p, v in _templates(test_user).items() if before.get(p) != v}
    assert len(recorded) == 1, f"the first step records one template: {recorded}"
    path, stamp = recorded.popitem()
    second = _run(submit, images["sqsh"], cwd, "sh", "-c", PROBE)
    assert _templates(test_user)[path] == stamp, "the second step was planned by Python again"
    assert _named(second) == _named(first)
    assert f"HPCCONT_SLURM_STEP={second.split()[0]}.0\n" in second
    assert "uid=%d" % test_user.pw_uid in first and f"{cwd}\n" in first
    assert " squashfuse" in first or "fuse.squashfuse" in first, first


def test_c_built_container_serves_eight_tasks_and_goes_with_the_step(builder, submit, images, test_user,
                                                                     shared_tmp):
    cwd = _workdir(shared_tmp, test_user, "tpl-eight")
    probe = 'echo "$SLURM_PROCID $(readlink /proc/self/ns/mnt) $(cat /etc/hostname)"'
    for _ in range(2):
        before = _templates(test_user)
        r = submit("srun", "-n", "8", "--overcommit", f"--container={images['sqsh']}",
                   "sh", "-c", probe, cwd=cwd)
        assert r.returncode == 0, r.stderr
        rows = [line.split() for line in r.stdout.splitlines()]
        assert sorted(int(row[0]) for row in rows) == list(range(8))
        assert len({row[1] for row in rows}) == 1, "one mount namespace for the step"
        assert {row[2] for row in rows} == {"container"}
    assert _templates(test_user) == before, "the second step was planned by Python"
    for _ in range(50):
        left = [cmd for cmd in helpers.fuse_processes(str(images["sqsh"]))]
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"FUSE server left after the step: {left}"


def test_a_changed_image_is_planned_again(builder, submit, images, test_user, shared_tmp, site_root):
    cwd = _workdir(shared_tmp, test_user, "tpl-changed")
    image = site_root / "slurm-images" / "tpl-changed.sqsh"
    shutil.copy(images["sqsh"], image)
    image.chmod(0o644)
    _run(submit, image, cwd, "cat", "/etc/hostname")
    stamps = _templates(test_user)
    assert _run(submit, image, cwd, "cat", "/etc/hostname") == "container\n"
    assert _templates(test_user) == stamps
    # Another image under the same name: its stamp differs, so Python plans it (and records it).
    tmp = image.with_suffix(".new")
    shutil.copy(images["other"], tmp)
    tmp.chmod(0o644)
    os.replace(tmp, image)
    assert _run(submit, image, cwd, "cat", "/etc/hostname") == "other\n"
    assert _templates(test_user) != stamps


def test_env_script_using_the_job_id_is_never_templated(builder, submit, test_user, shared_tmp, world_tmp,
                                                        site_root):
    """An image env script that exports a value made of SLURM_JOB_ID: a template would give the
    next job the first job's value, so the second planning (under another step name) differs
    and nothing is recorded; every step gets its own value."""
    root = helpers.make_busybox_rootfs(world_tmp / "tpl-jobid-rootfs")
    (root / ".singularity.d/env/90-scratch.sh").write_text(
        'export SCRATCH="/scratch/$SLURM_JOB_ID"\n')
    image = helpers.mksquashfs(root, site_root / "slurm-images" / "tpl-jobid.sqsh")
    image.chmod(0o644)
    cwd = _workdir(shared_tmp, test_user, "tpl-jobid")
    before = _templates(test_user)
    seen = []
    for _ in range(2):
        out = _run(submit, image, cwd, "sh", "-c", 'echo "$SCRATCH $SLURM_JOB_ID"').split()
        assert out[0] == f"/scratch/{out[1]}", out
        seen.append(out[1])
    assert seen[0] != seen[1]
    assert _templates(test_user) == before, "a template was recorded for a job-dependent image"


def test_pmix_step_is_templated_and_sees_its_own_directories(builder, submit, images, test_user,
                                                              shared_tmp):
    """A PMIx step's container binds the directories Slurm made for that step (its name is in
    their paths): the template holds the name as a placeholder, and a step built from it sees
    its own directories, not the first step's."""
    cwd = _workdir(shared_tmp, test_user, "tpl-pmix")
    probe = 'echo "$SLURM_JOB_ID $PMIX_SERVER_TMPDIR $(test -d "$PMIX_SERVER_TMPDIR" && echo seen)"'
    seen = []
    for i in range(2):
        before = _templates(test_user)
        r = submit("srun", "--mpi=pmix", "-n", "2", "--overcommit",
                   f"--container={images['sqsh']}", "sh", "-c", probe, cwd=cwd)
        assert r.returncode == 0, r.stderr
        rows = [line.split() for line in r.stdout.splitlines()]
        assert len(rows) == 2 and all(len(row) == 3 and row[2] == "seen" for row in rows), rows
        job = rows[0][0]
        assert all(f"pmix.{job}.0" in row[1] for row in rows), rows
        seen.append(job)
        changed = {p for p, v in _templates(test_user).items() if before.get(p) != v}
        assert bool(changed) == (i == 0), f"step {i}: templates written {changed}"
    assert seen[0] != seen[1]


def test_named_replaces_whole_step_names_only():
    assert template.named("/spool/pmix.12.0/x", "12.0") == "/spool/pmix.\x01/x"
    assert template.named("/x/112.0 12.05 12.0", "12.0") == "/x/112.0 12.05 \x01"


def test_material_leaves_out_the_step_and_its_varying_variables():
    argv = ["/opt/bin/hpccont", "slurm", "prepare", "--step", "12.0", "--arg", "a=b", "--", "true"]
    env_a = b"HOME=/home/u\0SLURM_JOB_ID=12\0SLURM_SRUN_COMM_PORT=4000\0"
    env_b = b"HOME=/home/u\0SLURM_JOB_ID=13\0SLURM_SRUN_COMM_PORT=4100\0"
    other = ["/opt/bin/hpccont", "slurm", "prepare", "--step", "13.4", "--arg", "a=b", "--", "ls"]
    key = template.material(argv, "/w", env_a)
    assert key == template.material(other, "/w", env_b)
    assert b"12.0" not in key and b"4000" not in key
    assert key != template.material(argv, "/w", b"HOME=/home/v\0")
    assert key != template.material(argv, "/elsewhere", env_a)
    assert key != template.material(argv[:6] + ["a=c", "--", "true"], "/w", env_a)


def test_step_c_has_the_same_rules():
    """step.c and store.c keep their own copy of the key's rules (they run before any
    Python): the same VARYING names, magic and placeholder as template.py."""
    import re
    src = (helpers.REPO / "launcher" / "step.c").read_text()
    store = (helpers.REPO / "launcher" / "store.c").read_text()
    names = re.search(r"static const char \*varying\[\] = \{(.*?)NULL", store, re.S).group(1)
    assert tuple(re.findall(r'"([A-Z_]+)"', names)) == template.VARYING
    assert f'#define STEP_MAGIC "{template.STEP_MAGIC.decode()}"' in src
    assert "#define PLACEHOLDER '\\001'" in src and template.PLACEHOLDER == "\x01"
    assert f'strchr("{template.TASK_TAGS}", data[i])' in src
