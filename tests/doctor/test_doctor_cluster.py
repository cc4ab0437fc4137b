"""``hpccont doctor`` on the real one-node test cluster (tests/slurm_fixtures.py), as root and
as the unprivileged test user: the cluster is set up the way docs/site-install.md says, so the
Slurm checks must pass; a plugstack without the hpccont line must then fail."""
import json
import os
import subprocess

import pytest

import helpers

pytestmark = [pytest.mark.slurm, pytest.mark.rootless, pytest.mark.timeout(300)]


def doctor_as_root(install, cluster, *args):
    env = {k: v for k, v in os.environ.items() if k != "HPCCONT_CONFIG"}
    env.update(cluster.env)
    return subprocess.run([install["hpccont"], "doctor", "--json", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def doctor_as_user(install, cluster, *args):
    return helpers.as_user([install["hpccont"], "doctor", "--json", *args], env=cluster.env)


def checks_of(r):
    data = json.loads(r.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    failed = any(c["status"] == "FAIL" for c in checks.values())
    assert r.returncode == (1 if failed else 0), r.stdout + r.stderr
    return data, checks


def slurmd_version():
    out = subprocess.run(["slurmd", "-V"], capture_output=True, text=True).stdout
    return out.split()[-1]


@pytest.mark.parametrize("who", ["root", "hpcuser"])
def test_doctor_passes_on_the_test_cluster(who, slurm_cluster, install, spank_so, test_user):
    run = doctor_as_root if who == "root" else doctor_as_user
    data, checks = checks_of(run(install, slurm_cluster))
    assert data["slurm_conf"] == str(slurm_cluster.conf)
    assert data["euid"] == (0 if who == "root" else test_user.pw_uid)
    for name in ("slurm-conf", "plugstack", "spank-plugin", "cli-filter", "spool-tmpfs",
                 "pmix", "userns", "squashfuse"):
        assert checks[name]["status"] == "OK", (name, checks[name])
    plugstack = slurm_cluster.conf.parent / "plugstack.conf"     # PlugStackConfig there
    assert checks["plugstack"]["found"].startswith(f"{plugstack}:1: required {spank_so}")
    assert f"hpccont={install['hpccont']}" in checks["plugstack"]["found"]
    plugin = checks["spank-plugin"]["found"]
    assert str(spank_so) in plugin
    version = slurmd_version()
    assert f"built for Slurm {version}" in plugin and f"Slurm here is {version}" in plugin
    assert checks["nvml"]["status"] in ("OK", "SKIP", "WARN")


def test_doctor_fails_when_the_cluster_loses_the_plugin_line(slurm_cluster, install, test_user):
    bad = "# hpccont line removed\n"
    try:
        slurm_cluster.set_plugstack(bad)
        for run in (doctor_as_root, doctor_as_user):
            r = run(install, slurm_cluster, "--only", "plugstack,spank-plugin")
            data, checks = checks_of(r)
            assert r.returncode == 1
            assert checks["plugstack"]["status"] == "FAIL"
            assert checks["spank-plugin"]["status"] == "FAIL"
    finally:
        slurm_cluster.set_plugstack(slurm_cluster.default_plugstack)
    r = doctor_as_root(install, slurm_cluster, "--only", "plugstack,spank-plugin")
    assert r.returncode == 0, r.stdout


def test_doctor_text_output(slurm_cluster, install, test_user):
    """One line per check: STATUS NAME FOUND [-> FIX]; the summary goes to stderr."""
    r = helpers.as_user([install["hpccont"], "doctor"], env=slurm_cluster.env)
    print(r.stdout + r.stderr)
    lines = r.stdout.splitlines()
    from hpccont.doctor import CHECKS
    assert [line.split()[1] for line in lines] == list(CHECKS)
    for line in lines:
        status = line.split()[0]
        assert status in ("OK", "WARN", "FAIL", "SKIP")
        assert ("  -> " in line) == (status in ("WARN", "FAIL")), line
    assert r.returncode == (1 if any(line.startswith("FAIL") for line in lines) else 0)
    assert r.stderr.startswith("hpccont doctor: ")
