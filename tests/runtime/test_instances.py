"""``hpccont instance start|list|stop`` and ``exec instance://NAME``, as the unprivileged user."""
import json
import time

import pytest

import helpers

pytestmark = pytest.mark.rootless


def test_instance_lifecycle(hpccont_user, busybox_sif, shared_tmp):
    name = f"t{time.monotonic_ns() % 100000}"
    r = hpccont_user("instance", "start", "--contain", busybox_sif, name, cwd="/tmp")
    assert r.returncode == 0 and "INFO:    instance started successfully" in r.stderr, r.stderr
    try:
        r = hpccont_user("instance", "start", busybox_sif, name)
        assert r.returncode != 0 and "already running" in r.stderr
        listed = json.loads(hpccont_user("instance", "list", "--json").stdout)["instances"]
        mine = [e for e in listed if e["instance"] == name]
        assert mine and mine[0]["img"] == str(busybox_sif)
        # Two commands see the same private /tmp and the same mount namespace.
        a = hpccont_user("exec", f"instance://{name}", "sh", "-c",
                         "echo shared > /tmp/state; readlink /proc/self/ns/mnt", cwd="/tmp")
        b = hpccont_user("exec", f"instance://{name}", "sh", "-c",
                         "cat /tmp/state; readlink /proc/self/ns/mnt", cwd="/tmp")
        assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
        assert b.stdout.split("\n")[0] == "shared"
        assert a.stdout.strip() == b.stdout.split("\n")[1]
        keeper = mine[0]["pid"]
    finally:
        r = hpccont_user("instance", "stop", name)
    assert r.returncode == 0 and f"INFO:    Stopping {name} instance of" in r.stderr
    deadline = time.time() + 5
    while time.time() < deadline and helpers.fuse_processes(str(busybox_sif)):
        time.sleep(0.1)
    assert not helpers.fuse_processes(str(busybox_sif))
    state = open(f"/proc/{keeper}/stat").read().split(") ")[1][0] if \
        __import__("os").path.exists(f"/proc/{keeper}") else "gone"
    assert state in ("Z", "gone")
    r = hpccont_user("exec", f"instance://{name}", "true")
    assert r.returncode != 0 and "no running instance" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_instance_errors(hpccont_user, busybox_sif):
    r = hpccont_user("instance", "stop", "never-started")
    assert r.returncode != 0 and "no instance found with name 'never-started'" in r.stderr
    r = hpccont_user("instance", "start", busybox_sif)
    assert r.returncode == 2 and "usage" in r.stderr
    r = hpccont_user("instance", "start", "/nonexistent.sif", "x")
    assert r.returncode != 0 and "image not found" in r.stderr
