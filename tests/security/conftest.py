"""Session fixtures of the escalation tests: one hostile image, built once, and the secrets an
attacker (the unprivileged test user) must not reach.

The hostile image is the busybox test rootfs plus everything an image author could plant:
a setuid-root program, a program with file capabilities, device nodes, symbolic links to
the host's root and out of the image, environment scripts that set the runtime's own
variables.  The probe program (probe.c) prints what its process can do, so each test reads
words rather than guessing from exit codes; each attack is first shown to work on the host
(the positive control), so that a test whose attack silently did nothing cannot pass.
"""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import helpers
from seclib import SECRET

HERE = Path(__file__).resolve().parent
VICTIM = "hpcvictim"          # a third user: owner of a 0600 file the test user must not read

# Planted in the image: name -> what it is.  Links name host paths; resolved inside the image
# they lead to the image's own (absent, or harmless) files.
IMAGE_LINKS = {
    "hostroot": "/",
    "etc/up": "../../../../../../..",
    "etc/shadow-link": "/etc/shadow",
}

HOSTILE_ENV = """#!/bin/sh
# An image's environment script setting variables the runtime reads on the host: they must
# only ever reach the container's command.
export LD_PRELOAD=/opt/evil.so
export HPCCONT_CONFIG=/opt/evil.yaml
export HPCCONT_BIND=/etc:/hostetc
export APPTAINER_BIND=/etc:/hostetc2
export SINGULARITY_BIND=/etc:/hostetc3
export HPCCONT_SHARE=1
export APPTAINERENV_INJECTED=1
export HOSTILE_ENV_RAN=yes
"""


def _build_probe(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(HERE / "probe.c")], check=True)
    return out


@pytest.fixture(scope="session")
def probe(world_tmp):
    """The probe, on the host, world-executable (a copy is in the image)."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the probe")
    path = _build_probe(world_tmp / "security" / "probe")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def hostile_rootfs(busybox_rootfs, world_tmp, probe, host_target):
    root = world_tmp / "security" / "hostile-rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    shutil.copy2(probe, root / "bin/probe")
    suid = root / "bin/suidprobe"
    shutil.copy2(probe, suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    capped = root / "bin/capprobe"
    shutil.copy2(probe, capped)
    subprocess.run(["setcap", "cap_dac_read_search,cap_dac_override,cap_setuid+ep", str(capped)],
                   check=True)
    os.mknod(root / "dev-null-node", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "etc/disk-node", 0o666 | stat.S_IFBLK, os.makedev(7, 0))
    for node in ("dev-null-node", "etc/disk-node"):
        os.chmod(root / node, 0o666)          # past the umask: anyone may open them
    for name, target in IMAGE_LINKS.items():
        (root / name).symlink_to(target)
    # A bind destination that is a link out of the image, to a host directory that exists.
    (root / "etc/escape").symlink_to("/../../.." + str(host_target))
    (root / "etc/abs-out").symlink_to(str(host_target))
    env = root / ".singularity.d/env/50-hostile.sh"
    env.write_text(HOSTILE_ENV)
    env.chmod(0o755)
    return root


@pytest.fixture(scope="session")
def host_target(world_tmp):
    """A host directory that image links point at; nothing may ever appear in it."""
    d = world_tmp / "security" / "host-target"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    return d


@pytest.fixture(scope="session")
def hostile_sif(hostile_rootfs, world_tmp, install):
    out = world_tmp / "security" / "hostile.sif"
    r = subprocess.run([install["hpccont"], "build", str(out), str(hostile_rootfs)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out.chmod(0o644)
    _assert_planted(out, world_tmp / "security" / "unpacked")
    return out


def _assert_planted(sif: Path, scratch: Path) -> None:
    """The image really carries the setuid bit, the capability and the device nodes (unpacked
    as root): otherwise the tests below would prove nothing."""
    import sys
    sys.path.insert(0, str(helpers.REPO))
    from hpccont.image import sif as sifmod
    part = sifmod.read_sif(str(sif)).primary_partition()
    subprocess.run(["unsquashfs", "-q", "-n", "-o", str(part.offset), "-d", str(scratch),
                    str(sif), "bin/suidprobe", "bin/capprobe", "dev-null-node"],
                   check=True, stdout=subprocess.DEVNULL)
    assert os.stat(scratch / "bin/suidprobe").st_mode & stat.S_ISUID
    assert os.stat(scratch / "bin/suidprobe").st_uid == 0
    assert os.getxattr(scratch / "bin/capprobe", "security.capability")
    assert stat.S_ISCHR(os.stat(scratch / "dev-null-node").st_mode)
    shutil.rmtree(scratch)


@pytest.fixture(scope="session")
def victim(test_user):
    return helpers.ensure_test_user(VICTIM)


@pytest.fixture(scope="session")
def secrets(world_tmp, victim):
    """0600 files the test user must never read: root's, a third user's, and a readable file
    in root's 0700 directory.  Under /tmp, which every container sees (a default bind)."""
    d = world_tmp / "security" / "secrets"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    out = {}
    for name, owner in (("root", 0), ("victim", victim.pw_uid)):
        f = d / f"{name}-0600"
        f.write_text(f"{SECRET}-{name}\n")
        os.chown(f, owner, owner if owner else 0)
        f.chmod(0o600)
        out[name] = f
    private = d / "root-0700"
    private.mkdir(exist_ok=True)
    private.chmod(0o700)
    (private / "inside").write_text(f"{SECRET}-private\n")
    (private / "inside").chmod(0o644)
    out["private_dir"] = private
    victim_dir = d / "victim-0700"
    victim_dir.mkdir(exist_ok=True)
    (victim_dir / "upper").mkdir(exist_ok=True)
    (victim_dir / "upper" / "inside").write_text(f"{SECRET}-victimdir\n")
    subprocess.run(["chown", "-R", f"{victim.pw_uid}:{victim.pw_gid}", str(victim_dir)], check=True)
    victim_dir.chmod(0o700)
    out["victim_dir"] = victim_dir
    return out
