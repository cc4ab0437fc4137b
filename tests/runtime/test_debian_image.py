"""A real Debian userland (debootstrap minbase, cached per machine) through the runtime:
dynamic binaries, bash, the image's own /etc/passwd, and Lmod modules from the host's module
tree used inside the container (site config ``modules.tree``)."""
import pytest

import helpers

pytestmark = [pytest.mark.debootstrap, pytest.mark.rootless, pytest.mark.slow]


@pytest.fixture(scope="module")
def debian_sqsh(world_tmp):
    tree = helpers.debootstrap_rootfs("minbase")
    out = world_tmp / "images" / "debian.sqsh"
    out.parent.mkdir(exist_ok=True)
    if not out.exists():
        helpers.mksquashfs(tree, out, comp="zstd")
    out.chmod(0o644)
    return out


def test_debian_userland(hpccont_user, debian_sqsh, test_user):
    r = hpccont_user("exec", debian_sqsh, "bash", "-c",
                     'source /etc/os-release; echo "$ID $VERSION_CODENAME"; id -un; '
                     'getent passwd root | cut -d: -f1; ls -ld / | cut -c1-10', cwd="/tmp")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["debian bookworm", test_user.pw_name, "root"]


def test_module_load_inside_the_container(hpccont_user, debian_sqsh, shared_tmp):
    tree = shared_tmp / "modules"
    (tree / "hello").mkdir(parents=True)
    (tree / "hello" / "1.0.lua").write_text('setenv("HELLO_FROM_MODULE", "yes")\n')
    subprocess_chmod(tree)
    cfg = shared_tmp / "site.yaml"
    cfg.write_text(f"modules:\n  tree: [{tree}]\n")
    cfg.chmod(0o644)
    r = hpccont_user("exec", debian_sqsh, "bash", "-c",
                     "module load hello/1.0 && echo loaded=$HELLO_FROM_MODULE && module list 2>&1",
                     env={"HPCCONT_CONFIG": str(cfg)}, cwd="/tmp")
    assert r.returncode == 0, r.stderr
    assert "loaded=yes" in r.stdout and "hello/1.0" in r.stdout


def subprocess_chmod(path):
    import subprocess
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)
