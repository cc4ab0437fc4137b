"""Pulls from a real registry (TLS, Basic auth) as the unprivileged user, then exec of the SIF;
build from docker://, Bootstrap: docker; the cache making a second pull free."""
import json
import os
import subprocess

import pytest

from regtools import cache_is_clean, one_line_error

pytestmark = [pytest.mark.registry, pytest.mark.rootless]


def test_pull_then_exec_as_user(hpccont_user, images, user_env, shared_tmp):
    out = shared_tmp / "bb.sif"
    r = hpccont_user("pull", out, images["gzip"]["ref"], env=user_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""             # silent when not on a terminal
    assert os.stat(out).st_mode & 0o111
    r = hpccont_user("exec", out, "sh", "-c",
                     "cat /opt/app; ls /data; test -e /etc/removeme || echo gone; "
                     "cat /var/run/pidfile; echo; echo $GREETING", env=user_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == ["app v2", "new", "gone", "42", "hello from the registry", ""]
    r = hpccont_user("run", out, env=user_env)
    assert r.stdout.strip() == "from-cmd", r.stderr
    r = hpccont_user("inspect", "--labels", out, env=user_env)
    assert "maintainer" in r.stdout and images["gzip"]["repo"] in r.stdout
    cache_is_clean(shared_tmp / "cache")


def test_second_pull_downloads_and_converts_nothing(hpccont_user, images, user_env, shared_tmp,
                                                    registry):
    ref = images["gzip"]["ref"]
    assert hpccont_user("pull", shared_tmp / "a.sif", ref, env=user_env).returncode == 0
    sif_dir = shared_tmp / "cache" / "sif"
    cached = [p for p in sif_dir.iterdir() if p.suffix == ".sif"]
    assert len(cached) == 1
    before = (cached[0].stat().st_ino, cached[0].stat().st_ctime_ns)
    mark = registry.mark()
    r = hpccont_user("pull", shared_tmp / "b.sif", ref, env=user_env)
    assert r.returncode == 0, r.stderr
    log = registry.log_since(mark)
    assert "/blobs/" not in log                       # nothing downloaded
    assert log.count("/manifests/") >= 1               # the tag was resolved
    assert (cached[0].stat().st_ino, cached[0].stat().st_ctime_ns)[0] == before[0]
    assert len([p for p in sif_dir.iterdir() if p.suffix == ".sif"]) == 1
    assert (shared_tmp / "a.sif").read_bytes() == (shared_tmp / "b.sif").read_bytes()
    # pinned by digest: the manifest comes from the cache too, no request at all
    mark = registry.mark()
    digest_ref = ref.rsplit(":", 1)[0] + "@" + images["gzip"]["digest"]
    r = hpccont_user("pull", shared_tmp / "c.sif", digest_ref, env=user_env)
    assert r.returncode == 0, r.stderr
    assert registry.log_since(mark).count("response completed") == 0


def test_same_digest_gives_same_bytes(hpccont_user, images, user_env, shared_tmp):
    ref = images["zstd"]["ref"]
    assert hpccont_user("pull", shared_tmp / "a.sif", ref, env=user_env).returncode == 0
    env2 = dict(user_env, HPCCONT_CACHEDIR=str(shared_tmp / "other-cache"))
    r = hpccont_user("pull", "--disable-cache", shared_tmp / "b.sif", ref, env=env2)
    assert r.returncode == 0, r.stderr
    assert not (shared_tmp / "other-cache").exists()    # --disable-cache writes no cache
    assert (shared_tmp / "a.sif").read_bytes() == (shared_tmp / "b.sif").read_bytes()
    assert not [p for p in shared_tmp.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name,expect", [
    ("zstd", "entry default-arg"), ("plain", None), ("many", None)])
def test_layer_kinds(hpccont_user, images, user_env, shared_tmp, name, expect):
    out = shared_tmp / f"{name}.sif"
    r = hpccont_user("pull", out, images[name]["ref"], env=user_env)
    assert r.returncode == 0, r.stderr
    r = hpccont_user("exec", out, "sh", "-c", "cat /opt/app; ls /data; ls /opt | wc -l",
                     env=user_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[:2] == ["v2", "new"] or lines[:3] == ["app", "v2", "new"], r.stdout
    if name == "many":
        assert lines[-1] == "13"                        # app + 12 layer files
    if expect:
        assert hpccont_user("run", out, env=user_env).stdout.strip() == expect


def test_docker_schema2_manifest(hpccont_user, registry, user_env, shared_tmp, reg_root):
    import regtools as rt
    lay = rt.Layout(reg_root / "layout-docker")
    desc = lay.image(rt.busybox_layers(), cmd=["echo", "docker-v2s2"])
    lay.tag("v2s2", desc)
    rt.skopeo_push(lay, "v2s2", registry, "test/dockerv2", fmt="v2s2")   # converted on push
    out = shared_tmp / "d.sif"
    r = hpccont_user("pull", out, f"docker://{registry.host}/test/dockerv2:v2s2", env=user_env)
    assert r.returncode == 0, r.stderr
    assert hpccont_user("run", out, env=user_env).stdout.strip() == "docker-v2s2"
    blobs = shared_tmp / "cache" / "blob" / "sha256"
    types = {json.loads(p.read_bytes()).get("mediaType") for p in blobs.iterdir()
             if p.stat().st_size < 4096 and p.read_bytes()[:1] == b"{"}
    assert "application/vnd.docker.distribution.manifest.v2+json" in types


def test_multiarch_index(hpccont_user, images, user_env, shared_tmp):
    ref = images["multi"]["ref"]
    r = hpccont_user("pull", "--dir", shared_tmp, ref, env=user_env)
    assert r.returncode == 0, r.stderr
    default = shared_tmp / "multi_multi.sif"
    assert hpccont_user("exec", default, "cat", "/arch", env=user_env).stdout == "amd64\n"
    r = hpccont_user("pull", "--arch", "arm64", shared_tmp / "arm.sif", ref, env=user_env)
    assert r.returncode == 0, r.stderr
    r = hpccont_user("sif", "list", shared_tmp / "arm.sif", env=user_env)
    assert r.returncode == 0
    # an arm64 image cannot run here: look inside the squashfs instead
    from hpccont.image import sif
    image = sif.read_sif(str(shared_tmp / "arm.sif"))
    assert image is not None
    line = one_line_error(hpccont_user("pull", "--arch", "s390x", shared_tmp / "s.sif", ref,
                                       env=user_env))
    assert "no image for platform linux/s390x" in line and "linux/arm64/v8" in line
    assert not (shared_tmp / "s.sif").exists()


def test_existing_output_needs_force(hpccont_user, images, user_env, shared_tmp):
    out = shared_tmp / "x.sif"
    out.write_text("keep")
    out.chmod(0o666)
    line = one_line_error(hpccont_user("pull", out, images["gzip"]["ref"], env=user_env))
    assert "--force" in line and out.read_text() == "keep"
    assert hpccont_user("pull", "--force", out, images["gzip"]["ref"], env=user_env).returncode == 0
    assert out.read_bytes()[32:41] == b"SIF_MAGIC"


def test_build_from_docker_uri(hpccont_user, images, user_env, shared_tmp):
    out = shared_tmp / "built.sif"
    r = hpccont_user("build", "-q", out, images["gzip"]["ref"], env=user_env)
    assert r.returncode == 0, r.stderr
    r = hpccont_user("exec", out, "cat", "/opt/app", env=user_env)
    assert r.stdout == "app v2\n", r.stderr


def test_bootstrap_docker_definition(hpccont_user, images, user_env, shared_tmp, registry):
    d = shared_tmp / "img.def"
    d.write_text(f"Bootstrap: docker\nRegistry: {registry.host}\nNamespace: test\n"
                 "From: busybox:zstd\n\n%post\n    echo built-here > /built\n"
                 "    id -u > /post-uid\n\n%runscript\n    cat /built\n")
    out = shared_tmp / "def.sif"
    r = hpccont_user("build", "--fakeroot", "-q", out, d, env=user_env)
    assert r.returncode == 0, r.stderr
    r = hpccont_user("exec", out, "sh", "-c", "cat /built /post-uid /opt/app", env=user_env)
    assert r.stdout.split("\n")[:3] == ["built-here", "0", "app v2"], r.stderr
    assert hpccont_user("run", out, env=user_env).stdout == "built-here\n"
    r = hpccont_user("inspect", "--deffile", out, env=user_env)
    assert "Bootstrap: docker" in r.stdout


def test_pull_as_root(run_root, images, root_env, tmp_path):
    out = tmp_path / "root.sif"
    r = run_root("pull", out, images["gzip"]["ref"], env=root_env)
    assert r.returncode == 0, r.stderr
    r = run_root("exec", out, "cat", "/opt/app", env=root_env)
    assert r.stdout == "app v2\n", r.stderr


def test_pull_to_cache_api_for_schedulers(install, images, root_env, tmp_path):
    """What scheduler integrations call: a cached SIF path, and what it was pulled as."""
    import sys
    code = ("import sys, json; from hpccont.image.registry import pull_to_cache, pull;"
            "p = pull_to_cache(sys.argv[1], quiet=True, job=False);"
            "q = pull_to_cache(sys.argv[1]);"
            "print(json.dumps({'path': p, 'again': q, 'meta': pull.describe(p)}))")
    env = dict(root_env, PYTHONPATH=install["lib"])
    r = subprocess.run([sys.executable, "-c", code, images["many"]["ref"]], env=env,
                       capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["path"] == doc["again"] and doc["path"].startswith(str(tmp_path / "cache"))
    assert doc["meta"]["digest"] == images["many"]["digest"]
    assert doc["meta"]["pinned"].endswith("@" + images["many"]["digest"])
    assert doc["meta"]["ref"].endswith("test/busybox:many")


def test_warm_pull_after_the_tag_moved(hpccont_user, registry, user_env, shared_tmp, reg_root):
    """A warm pull starts copying the SIF the tag gave last time while the registry answers
    (fetch_out.EarlyCopy); when the tag has moved, that copy is dropped and the new image is
    what lands in OUT."""
    import regtools as rt
    bb = rt.busybox_layers()
    ref = f"docker://{registry.host}/test/moving:now"
    for n, version in enumerate(("one", "two", "two")):
        lay = rt.Layout(shared_tmp / f"layout-{n}")
        desc = lay.image(bb + [rt.ocifixtures.layer_tar([("opt/version", "file", version + "\n")])],
                         env=["PATH=/bin"])
        lay.tag("now", desc)
        rt.skopeo_push(lay, "now", registry, "test/moving")
        out = shared_tmp / f"{n}.sif"
        assert hpccont_user("pull", out, ref, env=user_env).returncode == 0
        r = hpccont_user("exec", out, "cat", "/opt/version", env=user_env)
        assert r.stdout.strip() == version, r.stderr
    assert (shared_tmp / "1.sif").read_bytes() == (shared_tmp / "2.sif").read_bytes()
    assert not [p for p in shared_tmp.iterdir() if ".partial-" in p.name]
    cache_is_clean(shared_tmp / "cache")


def test_warm_pull_is_one_request_without_http_client(install, images, root_env, tmp_path,
                                                      registry):
    """A warm pull's one request (the tag's manifest) is made by quick.py: no http.client, no
    e-mail parser, no typing.  The output is a file of its own, never a link to the cache."""
    import sys
    ref = images["plain"]["ref"]
    env = dict(root_env, PYTHONPATH=install["lib"])
    code = ("import sys; from hpccont.cli import main;"
            "rc = main.main(['pull', '-q', sys.argv[1], sys.argv[2]]);"
            "print(sorted(m for m in ('http.client', 'email.parser', 'typing', 'urllib.parse')"
            " if m in sys.modules)); sys.exit(rc)")
    cold = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.sif"), ref], env=env,
                          capture_output=True, text=True, cwd="/")
    assert cold.returncode == 0, cold.stderr
    mark = registry.mark()
    warm = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b.sif"), ref], env=env,
                          capture_output=True, text=True, cwd="/")
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.strip() == "[]", warm.stdout
    log = registry.log_since(mark)
    assert log.count("response completed") == 1 and "/manifests/" in log and "/blobs/" not in log
    out = tmp_path / "b.sif"
    cached = [p for p in (tmp_path / "cache" / "sif").iterdir() if p.suffix == ".sif"]
    assert len(cached) == 1 and out.stat().st_nlink == 1
    assert out.stat().st_ino != cached[0].stat().st_ino
    assert out.read_bytes() == cached[0].read_bytes()
    with open(out, "r+b") as f:          # the user's file: changing it leaves the cache alone
        f.write(b"X")
    assert cached[0].read_bytes()[:1] != b"X"
