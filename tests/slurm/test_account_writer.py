"""Accounting templates: a step's accounting entry written by launcher/account.c from root's
template of an earlier entry (schedulers/slurm/accounting.py), or by Python when anything
differs.

No Slurm daemons: the writer is run as the plugin runs it (as root, root's fixed environment,
the plugin's arguments, argv[0] the plugstack's launcher).  Which path wrote an entry is told
by the template file: Python's account rewrites it (a new file, renamed into place) after each
entry it writes; the C path only reads it.
"""
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import helpers

pytestmark = [pytest.mark.root]

ROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}


@pytest.fixture
def writer(install):
    if os.geteuid() != 0:
        pytest.skip("the accounting program runs as root")
    if install.get("account") is None:
        pytest.skip("no C compiler: hpccont-account is not built")
    return install["account"]


@pytest.fixture
def site(tmp_path, shared_tmp, busybox_sif, test_user):
    """A root-only log directory and an image of the test user's own in a directory of theirs."""
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    home = shared_tmp / "work"
    home.mkdir()
    os.chown(home, test_user.pw_uid, test_user.pw_gid)
    image = helpers.private_copy(busybox_sif, home / "img.sif")
    os.chown(image, test_user.pw_uid, test_user.pw_gid)
    return {"log": logs / "steps.jsonl", "image": image, "work": home, "user": test_user}


def _account(writer, install, site, job, *, image=None, node="0", extra=()):
    u = site["user"]
    argv = [install["hpccont"], "slurm", "account", "--step", f"{job}.0",
            "--arg", f"hpccont={install['hpccont']}", "--arg", f"accounting={site['log']}",
            "--arg", "admin_comment=no",
            "--opt", f"hpccont-image={image or site['image'].name}",
            "--user", f"{u.pw_uid}:{u.pw_gid}:{u.pw_gid}", "--node", node,
            "--jobenv", f"PWD={site['work']}", "--jobenv", f"SLURM_JOB_ID={job}",
            "--jobenv", f"SLURM_JOBID={job}", "--jobenv", "SLURM_NNODES=1", *extra, "--"]
    r = subprocess.run(argv, executable=str(writer), env=ROOT_ENV, cwd="/",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return _entries(site)


def _entries(site) -> list:
    try:
        return [json.loads(line) for line in site["log"].read_text().splitlines()]
    except FileNotFoundError:
        return []


def _template(site) -> "os.stat_result | None":
    found = list(Path(f"{site['log']}.templates").glob("account-*"))
    assert len(found) <= 1, found
    return found[0].stat() if found else None


def _same(a: dict, b: dict) -> bool:
    """Entries equal but for what differs from step to step."""
    drop = ("job", "time")
    return {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}


def test_second_entry_is_written_in_c_and_equals_pythons(writer, install, site):
    first = _account(writer, install, site, 1001)
    assert len(first) == 1 and first[0]["sha256"] and not first[0]["error"], first
    tpl = _template(site)
    assert tpl is not None, "Python's entry records a template"
    assert tpl.st_uid == 0 and stat.S_IMODE(tpl.st_mode) == 0o600
    d = Path(f"{site['log']}.templates").stat()
    assert d.st_uid == 0 and stat.S_IMODE(d.st_mode) == 0o700
    second = _account(writer, install, site, 1002)
    assert len(second) == 2
    assert _template(site).st_ino == tpl.st_ino, "the second entry was written by Python again"
    assert second[1]["job"] == "1002" and second[1]["step"] == "0"
    assert _same(second[0], second[1]), second
    assert second[1]["time"][:4].isdigit() and second[1]["time"][10] == "T"
    # another node of a step has its own entry (its name, not the first node's index)
    third = _account(writer, install, site, 1003, node="2")
    assert _template(site).st_ino == tpl.st_ino and _same(second[1], third[2])


def test_a_rewritten_image_is_hashed_again_by_python(writer, install, site):
    """Same size, same mtime, other bytes: only the ctime tells, and the C path must not
    record the old digest."""
    _account(writer, install, site, 2001)
    tpl = _template(site)
    image = site["image"]
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    entries = _account(writer, install, site, 2002)
    assert entries[1]["sha256"] != entries[0]["sha256"], "the old digest was recorded"
    assert _template(site).st_ino != tpl.st_ino


def test_what_the_user_swaps_in_is_never_read_as_root(writer, install, site, shared_tmp):
    """After a template exists, the image becomes a symlink to a root-only file, then a FIFO:
    the child that is the user cannot open either, so Python writes the entry, with the
    error, and no digest of the root-only file appears anywhere."""
    _account(writer, install, site, 3001)
    secret = shared_tmp / "secret"
    secret.write_bytes(site["image"].read_bytes() + b"root only")
    secret.chmod(0o600)
    image = site["image"]
    image.unlink()
    image.symlink_to(secret)
    entries = _account(writer, install, site, 3002)
    assert entries[1]["sha256"] == "" and "ermission" in entries[1]["error"], entries[1]
    image.unlink()
    os.mkfifo(image)
    os.chown(image, site["user"].pw_uid, site["user"].pw_gid)
    entries = _account(writer, install, site, 3003)            # returns: nothing blocks
    assert entries[2]["sha256"] == "" and entries[2]["error"], entries[2]


def test_templates_anyone_but_root_could_write_are_not_used(writer, install, site, test_user):
    _account(writer, install, site, 4001)
    tpl = next(Path(f"{site['log']}.templates").glob("account-*"))
    # a template the user owns (as if planted): not used, replaced by Python's
    os.chown(tpl, test_user.pw_uid, test_user.pw_gid)
    planted = tpl.stat().st_ino
    entries = _account(writer, install, site, 4002)
    assert len(entries) == 2 and _template(site).st_uid == 0
    assert _template(site).st_ino != planted
    # a template directory others may write: neither read nor written
    d = Path(f"{site['log']}.templates")
    d.chmod(0o777)
    before = _template(site)
    entries = _account(writer, install, site, 4003)
    assert len(entries) == 3 and entries[2]["sha256"] == entries[0]["sha256"]
    assert _template(site).st_ino == before.st_ino and _template(site).st_mtime_ns == before.st_mtime_ns
    d.chmod(0o700)


def test_other_inputs_get_their_own_template(writer, install, site):
    """Another option, another directory: another key, so the C path does not apply the
    first entry's template to them."""
    _account(writer, install, site, 5001)
    _account(writer, install, site, 5002, extra=("--opt", "container-writable-tmpfs"))
    templates = list(Path(f"{site['log']}.templates").glob("account-*"))
    assert len(templates) == 2
    entries = _entries(site)
    assert "container-writable-tmpfs" in entries[1]["options"]
    assert "container-writable-tmpfs" not in entries[0]["options"]


def test_run_under_its_own_name_it_refuses(writer, site):
    r = subprocess.run([str(writer), "slurm", "account", "--step", "1.0", "--"], env=ROOT_ENV,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "hpccont-account" in r.stderr and len(r.stderr.splitlines()) == 1


def test_account_c_has_the_same_rules():
    """account.c keeps its own copy of the entry's rules: the same magic and open values as
    accounting.py."""
    from hpccont.schedulers.slurm import accounting
    src = (helpers.REPO / "launcher" / "account.c").read_text()
    assert f'#define ACCOUNT_MAGIC "{accounting.ACCOUNT_MAGIC.decode()}"' in src
    assert [ord(accounting.OPEN_VALUES[k]) for k in ("job", "node", "step", "time")] == [1, 2, 3, 4]
    assert "values[1] = job;" in src and "values[2] = node;" in src and \
        "values[3] = dot + 1;" in src and "values[4] = now;" in src
