"""``hpccont pbs``: install commands, hook config check, launch preview."""
import json

import pytest

from pbslib import HOOK, REPO

CONFIG = REPO / "pbs_hooks" / "hpccont.json"


def test_install_commands_cover_resources_and_hook(hpccont):
    r = hpccont("pbs", "install-commands", "--hook-file", HOOK, "--config", CONFIG)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for expected in [
        'qmgr -c "create resource container type=string"',
        'qmgr -c "create resource container_bind type=string"',
        'qmgr -c "create resource container_nv type=boolean"',
        'qmgr -c "create hook hpccont_launch"',
        "qmgr -c \"set hook hpccont_launch event = 'execjob_begin,execjob_launch,execjob_end'\"",
        'qmgr -c "set hook hpccont_launch order = 200"',
        'qmgr -c "set hook hpccont_launch alarm = 60"',
        'qmgr -c "set hook hpccont_launch fail_action = offline_vnodes"',
        f'qmgr -c "import hook hpccont_launch application/x-python default {HOOK}"',
        f'qmgr -c "import hook hpccont_launch application/x-config default {CONFIG}"',
        'qmgr -c "set hook hpccont_launch enabled = true"',
    ]:
        assert expected in lines
    assert sum(1 for x in lines if "create resource" in x) == 9
    # the README gives the same commands
    readme = (REPO / "pbs_hooks" / "README.md").read_text()
    for line in lines:
        if "import hook" not in line:
            assert line in readme, line


@pytest.mark.parametrize("args, message", [
    (["install-commands", "--order", "0"], "--order must be between 1 and 1000"),
    (["install-commands", "--alarm", "-1"], "--alarm must be a positive"),
    (["bogus"], "unknown pbs command 'bogus'"),
    (["launch-command"], "give the task's program"),
    (["launch-command", "-l", "container", "--", "true"], "-l needs NAME=VALUE"),
])
def test_usage_errors_are_one_line(hpccont, args, message):
    r = hpccont("pbs", *args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_check_hook(hpccont, install, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"hpccont": install["hpccont"], "pythonpath": [install["lib"]]}))
    r = hpccont("pbs", "check-hook", good)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hpccont": "/nonexistent/hpccont", "pythonpath": [str(tmp_path)]}))
    r = hpccont("pbs", "check-hook", bad)
    assert r.returncode == 1
    assert "not an executable" in r.stderr and "no hpccont package" in r.stderr
    worse = tmp_path / "worse.json"
    worse.write_text('{"order": 3}')
    r = hpccont("pbs", "check-hook", worse)
    assert r.returncode == 3 and "unknown key 'order'" in r.stderr and r.stderr.count("\n") == 1


def test_launch_command_preview(hpccont, busybox_squashfs, tmp_path):
    cfg = tmp_path / "h.json"
    cfg.write_text(json.dumps({"hpccont": "/usr/bin/hpccont"}))
    r = hpccont("pbs", "launch-command", "--config", cfg, "-l", f"container={busybox_squashfs}",
                "-l", "container_nv=true", "-v", "HPCCONT_CONTAINER_MPI=bind", "--json",
                "--tm-task", "--", "/bin/hostname", "-s")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["wrap"] and out["argv"] == ["/usr/bin/hpccont", "exec", "--nv", "--mpi", "bind",
                                            str(busybox_squashfs), "/bin/hostname", "-s"]
    r = hpccont("pbs", "launch-command", "--config", cfg, "--", "/bin/hostname")
    assert r.stdout == "/bin/hostname\n"
    r = hpccont("pbs", "launch-command", "--config", cfg, "-l", "container=nope.sif", "--", "true")
    assert r.returncode == 4 and "'nope.sif' not found" in r.stderr


def test_launch_command_as_the_jobs_user(hpccont, busybox_squashfs, shared_tmp, tmp_path):
    """--user previews with the job user's rights, as the hook opens the image."""
    import os
    import shutil
    from pbslib import job_user
    if os.geteuid() != 0:
        pytest.skip("opening as another user needs root")
    cfg = tmp_path / "h.json"
    cfg.write_text(json.dumps({"hpccont": "/usr/bin/hpccont"}))
    secret = shared_tmp / "root-only.sqsh"
    shutil.copy(busybox_squashfs, secret)
    secret.chmod(0o600)
    args = ["pbs", "launch-command", "--config", cfg, "-l", f"container={secret}", "--", "true"]
    assert hpccont(*args).returncode == 0                       # root may read it
    r = hpccont(*args[:2], "--user", job_user(), *args[2:])
    assert r.returncode == 4 and "Permission denied" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_check_hook_flags_root_programs_others_can_change(hpccont, install, tmp_path):
    import os
    if os.geteuid() != 0:
        pytest.skip("ownership checks are about root's files")
    prog = tmp_path / "bin" / "verify"
    prog.parent.mkdir()
    prog.write_text("#!/bin/sh\nexit 0\n")
    prog.chmod(0o775)
    cfg = tmp_path / "h.json"
    cfg.write_text(json.dumps({"hpccont": install["hpccont"], "pythonpath": [install["lib"]],
                               "verify_command": [str(prog)]}))
    r = hpccont("pbs", "check-hook", cfg)
    assert r.returncode == 1 and f"verify_command: {prog} is run by the hook as root" in r.stderr
