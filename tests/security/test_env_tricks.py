"""Variables an image's environment scripts set reach the container's command only.

The scripts (/.singularity.d/env/*.sh) are evaluated inside the container, after pivot_root,
as the last step before the exec (runtime/apply.py ``exec_target``): by then every decision
of the runtime is made and every host-side helper (the FUSE server, the page-cache reader, a
keeper of a shared container) is started, with the user's environment, not the image's.
So an image that sets LD_PRELOAD to a host library, HPCCONT_CONFIG to a config adding binds,
HPCCONT_BIND/APPTAINER_BIND, APPTAINER_HOSTNAME or APPTAINERENV_* changes nothing outside
(each shown to act when the user sets it on the host).  The planted library logs every
process that loads it; the image is busybox-static, so any line in that log comes from a
host-side process.
"""
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.rootless

EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void)
{
    char exe[256] = "";
    FILE *f = fopen(LOG, "a");
    readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (f) { fprintf(f, "%d %s\n", (int)getpid(), exe); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def planted(world_tmp, hostile_rootfs, install):
    """(image whose env scripts set the runtime's variables, library log, evil config)."""
    d = world_tmp / "security" / "env-tricks"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    log = d / "loaded.log"
    log.write_text("")
    log.chmod(0o666)
    src, so = d / "evil.c", d / "evil.so"
    src.write_text(EVIL_C)
    subprocess.run(["cc", "-shared", "-fPIC", f'-DLOG="{log}"', "-o", str(so), str(src)],
                   check=True)
    so.chmod(0o755)
    config = d / "evil.yaml"
    config.write_text("mounts:\n  binds: [/etc:/hostetc4]\n")
    config.chmod(0o644)
    root = d / "rootfs"
    shutil.copytree(hostile_rootfs, root, symlinks=True)
    (root / ".singularity.d/env/60-host-paths.sh").write_text(
        f"export LD_PRELOAD={so}\nexport LD_AUDIT={so}\nexport HPCCONT_CONFIG={config}\n"
        "export APPTAINER_HOSTNAME=pwned-host APPTAINER_CONTAIN=1\n")
    sif = d / "env.sif"
    r = subprocess.run([install["hpccont"], "build", str(sif), str(root)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    sif.chmod(0o644)
    return sif, log, config, so


def _mount_points(out):
    """Mount points of the mountinfo lines in ``out`` (fifth field)."""
    return {line.split()[4] for line in out.splitlines() if " - " in line}


def _inside(out):
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_positive_controls(planted, hpccont_user):
    """The library loads on the host; the config, the bind variables and APPTAINER_HOSTNAME
    act when the user sets them on the host."""
    sif, log, config, so = planted
    subprocess.run(["runuser", "-u", "hpcuser", "--", "env", f"LD_PRELOAD={so}", "/bin/true"],
                   check=True)
    assert log.read_text(), "the planted library did not load on the host"
    log.write_text("")
    r = hpccont_user("exec", sif, "sh", "-c", SHOW,
                     env={"HPCCONT_CONFIG": str(config), "HPCCONT_BIND": "/etc:/hostetc",
                          "APPTAINER_BIND": "/etc:/hostetc2",
                          "APPTAINER_HOSTNAME": "pwned-host"})
    assert r.returncode == 0, r.stderr
    assert {"/hostetc", "/hostetc2", "/hostetc4"} <= _mount_points(r.stdout), r.stdout
    assert "HOSTNAME-IS:pwned-host" in r.stdout


SHOW = "env; cat /proc/self/mountinfo; echo HOSTNAME-IS:$(cat /proc/sys/kernel/hostname)"
LAUNCHES = {
    "exec": ["exec", "{img}", "sh", "-c", SHOW],
    "run": ["run", "{img}"],
    "shell": ["shell", "{img}", "-c", SHOW],
    "pid": ["exec", "--pid", "{img}", "sh", "-c", SHOW],
    "contain": ["exec", "--containall", "{img}", "sh", "-c", SHOW],
}


@pytest.mark.parametrize("launch", LAUNCHES)
def test_image_variables_stay_inside(planted, hpccont_user, launch):
    sif, log, config, so = planted
    r = hpccont_user(*[a.format(img=sif) for a in LAUNCHES[launch]])
    assert r.returncode == 0, r.stderr
    if launch != "run":
        env = _inside(r.stdout)
        assert env.get("HOSTILE_ENV_RAN") == "yes", r.stdout      # the scripts did run
        assert env.get("LD_PRELOAD") == str(so)                    # ...for the command only
        assert "INJECTED" not in env                               # APPTAINERENV_ is the host's
        assert not [m for m in _mount_points(r.stdout) if m.startswith("/hostetc")], r.stdout
        assert "HOSTNAME-IS:pwned-host" not in r.stdout
    assert log.read_text() == "", log.read_text()


def test_instance_keeper_ignores_image_variables(planted, hpccont_user):
    """A shared container's keeper runs on; each joined command evaluates the scripts anew."""
    sif, log, config, so = planted
    name = f"sec-env-{os.getpid()}"
    r = hpccont_user("instance", "start", sif, name)
    assert r.returncode == 0, r.stderr
    try:
        for _ in range(2):
            r = hpccont_user("exec", f"instance://{name}", "sh", "-c", SHOW)
            assert r.returncode == 0, r.stderr
            assert _inside(r.stdout).get("HOSTILE_ENV_RAN") == "yes"
            assert not [m for m in _mount_points(r.stdout) if m.startswith("/hostetc")]
    finally:
        stop = hpccont_user("instance", "stop", name)
    assert stop.returncode == 0, stop.stderr
    assert log.read_text() == "", log.read_text()
