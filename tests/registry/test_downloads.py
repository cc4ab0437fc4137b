"""Downloads that survive: 8 concurrent pulls into one cache fetch each blob once, a
registry killed mid-download is waited for and the download resumed with Range, a pull
killed mid-download is resumed by the next one."""
import os
import pwd
import signal
import subprocess
import time

import pytest

import regtools as rt

pytestmark = [pytest.mark.registry, pytest.mark.slow]


def _popen_user(argv, env, user="hpcuser"):
    pw = pwd.getpwnam(user)
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": user,
            "LANG": "C.UTF-8", **env}
    cmd = ["runuser", "-u", user, "--", "env", "-i"] + [f"{k}={v}" for k, v in base.items()]
    return subprocess.Popen(cmd + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


@pytest.mark.rootless
def test_eight_concurrent_pulls_download_each_blob_once(install, test_user, images, registry,
                                                        user_env, shared_tmp):
    img = images["big"]
    mark = registry.mark()
    procs = [_popen_user([install["hpccont"], "pull", str(shared_tmp / f"p{i}.sif"), img["ref"]],
                         user_env) for i in range(8)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    recent = registry.blob_gets(since=mark)
    digests = {g["digest"] for g in recent}
    assert len(digests) == 4                       # config + 3 layers
    for d in digests:
        got = [g for g in recent if g["digest"] == d]
        assert len(got) == 1, (d, got)             # each blob downloaded once
    first = (shared_tmp / "p0.sif").read_bytes()
    assert all((shared_tmp / f"p{i}.sif").read_bytes() == first for i in range(1, 8))
    sifs = list((shared_tmp / "cache" / "sif").glob("*.sif"))
    assert len(sifs) == 1                          # converted once
    assert not list((shared_tmp / "cache" / "tmp").iterdir())


def _wait_partial(cache, minimum, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in (cache / "tmp").glob("*.partial") if (cache / "tmp").exists() else ():
            try:
                if p.stat().st_size >= minimum:
                    return p
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError("no partial download appeared")


def test_registry_killed_mid_download_then_back(install, images, registry, root_env, tmp_path):
    proxy = rt.SlowProxy(registry.port, rate=6 << 20)
    ref = images["resume"]["ref"].replace(registry.host, f"127.0.0.1:{proxy.port}")
    cache = tmp_path / "cache"
    out = tmp_path / "r.sif"
    p = subprocess.Popen([install["hpccont"], "pull", str(out), ref], env=root_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        partial = _wait_partial(cache, 4 << 20)
        registry.stop()                                  # the registry dies mid-download
        size_then = partial.stat().st_size
        time.sleep(1.5)
        assert p.poll() is None                          # the pull waits and retries
        mark = registry.mark()
        registry.start()
        rc = p.wait(timeout=120)
        assert rc == 0, p.stderr.read()
    finally:
        rt.kill_tree(p)
        proxy.close()
        if registry.proc is None:
            registry.start()
    r = subprocess.run([install["hpccont"], "exec", str(out), "ls", "/big"], env=root_env,
                       capture_output=True, text=True)
    assert r.stdout.strip() == "file3", r.stderr
    resumed = [g for g in registry.blob_gets(since=mark) if g["status"] == 206]
    assert resumed, "the download was not resumed with a Range request"
    assert resumed[0]["written"] <= (24 << 20) + 4096 - size_then


def test_killed_pull_is_resumed_by_the_next(install, images, registry, root_env, tmp_path):
    proxy = rt.SlowProxy(registry.port, rate=6 << 20)
    ref = images["resume"]["ref"]
    slow_ref = ref.replace(registry.host, f"127.0.0.1:{proxy.port}")
    cache = tmp_path / "cache"
    out = tmp_path / "k.sif"
    p = subprocess.Popen([install["hpccont"], "pull", str(out), slow_ref], env=root_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        partial = _wait_partial(cache, 6 << 20)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        rt.kill_tree(p)
        proxy.close()
    assert not out.exists() and not [x for x in tmp_path.iterdir() if x.name.startswith(".")]
    have = partial.stat().st_size
    assert have >= 6 << 20
    mark = registry.mark()
    r = subprocess.run([install["hpccont"], "pull", str(out), ref], env=root_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = registry.blob_gets(since=mark)
    ranged = [g for g in got if g["status"] == 206]
    assert len(ranged) == 1 and ranged[0]["written"] < (24 << 20) - have + 65536 + 4096
    assert not list((cache / "tmp").glob("*.partial"))
