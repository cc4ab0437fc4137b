"""Session registries and images for the registry tests (regtools.py)."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import regtools as rt  # noqa: E402

NEEDED = ("docker-registry", "skopeo", "htpasswd", "openssl", "zstd")


@pytest.fixture(scope="session")
def reg_root(world_tmp):
    missing = [t for t in NEEDED if shutil.which(t) is None]
    if missing:
        pytest.skip(f"registry tests need {', '.join(missing)} (make setup installs them)")
    d = world_tmp / "registry"
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    return d


@pytest.fixture(scope="session")
def certs(reg_root):
    return rt.Certs(reg_root / "certs")


@pytest.fixture(scope="session")
def registry(reg_root, certs):
    """TLS + htpasswd Basic auth."""
    r = rt.Registry(reg_root / "basic", certs).start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def token_issuer(certs):
    t = rt.TokenIssuer(certs)
    yield t
    t.close()


@pytest.fixture(scope="session")
def token_registry(reg_root, certs, token_issuer):
    """TLS + token auth (Bearer) with the test's issuer."""
    r = rt.Registry(reg_root / "token", certs, auth="token", token_realm=token_issuer.realm)
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def images(reg_root, registry):
    """Images in the Basic-auth registry: name -> {'repo', 'tag', 'ref', 'digest'}."""
    lay = rt.Layout(reg_root / "layout")
    bb = rt.busybox_layers()
    env = ["PATH=/bin:/usr/bin", "GREETING=hello from the registry"]
    out = {}

    def push(name, repo, desc, **kw):
        lay.tag(name, desc)
        rt.skopeo_push(lay, name, registry, repo, **kw)
        out[name] = {"repo": repo, "tag": name, "ref": f"docker://{registry.host}/{repo}:{name}",
                     "digest": desc["digest"]}

    push("gzip", "test/busybox", lay.image(bb, env=env, cmd=["echo", "from-cmd"],
                                           labels={"maintainer": "tests"}))
    push("zstd", "test/busybox", lay.image(bb, compression="zstd", env=env,
                                           entrypoint=["echo", "entry"], cmd=["default-arg"]))
    push("plain", "test/busybox", lay.image(bb, compression="none", env=env))
    many = [bb[0]] + [rt.ocifixtures.layer_tar([("opt", "dir", None),
                                                (f"opt/layer{i:02d}", "file", f"{i}\n")])
                      for i in range(12)] + bb[1:]
    push("many", "test/busybox", lay.image(many, env=env))
    amd = lay.image([bb[0], rt.ocifixtures.layer_tar([("arch", "file", "amd64\n")])],
                    arch="amd64", env=env)
    arm = lay.image([bb[0], rt.ocifixtures.layer_tar([("arch", "file", "arm64\n")])],
                    arch="arm64", env=env)
    arm["platform"]["variant"] = "v8"
    push("multi", "test/multi", lay.multiarch([amd, arm]), all_platforms=True)
    push("big", "test/big", lay.image([bb[0], rt.big_layer(24, 1), rt.big_layer(8, 2)],
                                      compression="none", env=env))
    push("resume", "test/resume", lay.image([bb[0], rt.big_layer(24, 3)],
                                            compression="none", env=env))
    return out


@pytest.fixture
def user_env(shared_tmp, certs):
    """Environment of a pull as the test user: the test CA, credentials, a fresh cache."""
    cache = shared_tmp / "cache"
    return {"SSL_CERT_FILE": str(certs.ca), "HPCCONT_CACHEDIR": str(cache),
            "HPCCONT_DOCKER_USERNAME": rt.USER, "HPCCONT_DOCKER_PASSWORD": rt.PASSWORD,
            "TMPDIR": str(shared_tmp)}


@pytest.fixture
def root_env(tmp_path, certs):
    """The same for pulls as root, in the pytest process's environment (a copy)."""
    e = dict(os.environ)
    e.update({"SSL_CERT_FILE": str(certs.ca), "HPCCONT_CACHEDIR": str(tmp_path / "cache"),
              "HPCCONT_DOCKER_USERNAME": rt.USER, "HPCCONT_DOCKER_PASSWORD": rt.PASSWORD,
              "HOME": str(tmp_path / "home")})
    for k in ("DOCKER_CONFIG", "HPCCONT_AUTH_FILE", "SLURM_JOB_ID", "PBS_JOBID",
              "APPTAINER_CACHEDIR", "APPTAINER_DOCKER_USERNAME", "APPTAINER_DOCKER_PASSWORD"):
        e.pop(k, None)
    (tmp_path / "home").mkdir(exist_ok=True)
    return e


@pytest.fixture
def run_root(install):
    def run(*args, env, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 180)
        return subprocess.run([install["hpccont"], *map(str, args)], env=env, **kw)
    return run


@pytest.fixture
def short_tmp():
    d = tempfile.mkdtemp(prefix="hpcreg-", dir="/tmp")
    os.chmod(d, 0o777)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root")
