"""How the command is exec'd: directly when the image's env scripts can be evaluated without a
shell, through /bin/sh when they cannot (same environment either way), and a program without
"#!" still runs (through the shell, as execvp does).  Real squashfs images, root and the
unprivileged test user."""
import shutil

import pytest

import helpers

pytestmark = pytest.mark.rootless

SIMPLE = """#!/bin/sh
if [ -n "${HOSTVAR:-}" ]; then
    export SEEN_HOST="host said $HOSTVAR"
fi
export PATH="/opt/tools:$PATH" FROM_SCRIPT=simple
"""
NEEDS_SHELL = """#!/bin/sh
export FROM_SCRIPT="$(echo computed)"
echo "script output" >&2
"""


def env_of(stdout: str) -> dict:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def images(busybox_rootfs, world_tmp):
    out = {}
    for name, script in (("simple", SIMPLE), ("shell", NEEDS_SHELL)):
        root = world_tmp / "images" / f"env-{name}"
        if not root.exists():
            shutil.copytree(busybox_rootfs, root, symlinks=True)
            (root / ".singularity.d/env/95-test.sh").write_text(script)  # after 90-
            (root / "opt/tools").mkdir(parents=True)
            noshebang = root / "opt/tools/noshebang"
            noshebang.write_text('echo "ran by the shell: $1"\n')
            noshebang.chmod(0o755)
        out[name] = helpers.mksquashfs(root, world_tmp / "images" / f"env-{name}.sqsh")
        out[name].chmod(0o644)
    return out


@pytest.fixture(params=["root", "user"])
def run(request, hpccont, hpccont_user):
    return hpccont if request.param == "root" else hpccont_user


def test_simple_scripts_need_no_shell(run, images, shared_tmp):
    r = run("exec", "--debug", "--env", "USER_SET=u", images["simple"], "env",
            cwd=shared_tmp, env={"HOSTVAR": "hi"})
    assert r.returncode == 0, r.stderr
    env = env_of(r.stdout)
    assert env["FROM_SCRIPT"] == "simple" and env["SEEN_HOST"] == "host said hi"
    assert env["PATH"] == "/opt/tools:/bin:/usr/bin:/sbin:/usr/sbin"
    assert env["USER_SET"] == "u"
    assert "evaluating the image's environment scripts" in r.stderr
    assert "] exec /bin/env\n" in r.stderr       # the command itself: no shell in between


def test_scripts_needing_a_shell_get_one(run, images, shared_tmp):
    r = run("exec", "--debug", "--env", "USER_SET=u", images["shell"], "env", cwd=shared_tmp)
    assert r.returncode == 0, r.stderr
    env = env_of(r.stdout)
    assert env["FROM_SCRIPT"] == "computed" and env["USER_SET"] == "u"
    assert env["PATH"] == "/bin:/usr/bin:/sbin:/usr/sbin"
    assert "script output" in r.stderr           # the script really ran, in a shell
    assert "] exec /bin/sh\n" in r.stderr


def test_program_without_shebang_runs_through_the_shell(run, images, shared_tmp):
    r = run("exec", images["simple"], "noshebang", "arg", cwd=shared_tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ran by the shell: arg"


def test_missing_command_after_scripts(run, images, shared_tmp):
    for image in images.values():
        r = run("exec", image, "no-such-tool", cwd=shared_tmp)
        assert r.returncode == 127
        assert "no-such-tool: command not found in the container" in r.stderr
