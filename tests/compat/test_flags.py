"""Apptainer's action flags, each as the unprivileged test user through the ``apptainer`` name,
compared with what Apptainer documents (and its source does) for them."""
import os

import pytest

pytestmark = pytest.mark.rootless


def ns(run, image, name, *flags):
    r = run("exec", *flags, image, "readlink", f"/proc/self/ns/{name}")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def host_ns(name):
    return os.readlink(f"/proc/self/ns/{name}")


def test_pid_namespace_with_an_init(as_apptainer, bash_sif):
    r = as_apptainer("exec", "--pid", bash_sif, "sh", "-c", 'echo $$; cat /proc/1/cmdline | tr "\\0" " "')
    assert r.returncode == 0, r.stderr
    pid, init = r.stdout.splitlines()
    assert int(pid) > 1 and "exec" in init          # PID 1 is the init (hpccont), not the command
    r = as_apptainer("exec", "-p", "--no-init", bash_sif, "sh", "-c", "echo $$; exit 7")
    assert (r.returncode, r.stdout.strip()) == (7, "1")    # --no-init: the command is PID 1
    r = as_apptainer("exec", bash_sif, "sh", "-c", "echo $$")
    assert int(r.stdout) > 1 and int(r.stdout) != 1
    assert ns(as_apptainer, bash_sif, "pid") == host_ns("pid")


def test_pid_init_passes_signals_and_status(as_apptainer, bash_sif):
    r = as_apptainer("exec", "--pid", bash_sif, "sh", "-c", "kill -TERM $$; sleep 5")
    assert r.returncode in (143, -15), (r.returncode, r.stderr)
    r = as_apptainer("exec", "--containall", bash_sif, "sh", "-c", "exit 3")
    assert r.returncode == 3


def test_ipc_uts_hostname_net(as_apptainer, bash_sif):
    assert ns(as_apptainer, bash_sif, "ipc", "--ipc") != host_ns("ipc")
    assert ns(as_apptainer, bash_sif, "ipc") == host_ns("ipc")
    assert ns(as_apptainer, bash_sif, "uts", "--uts") != host_ns("uts")
    r = as_apptainer("exec", "--hostname", "box17", bash_sif, "hostname")
    assert r.stdout.strip() == "box17", r.stderr
    assert ns(as_apptainer, bash_sif, "net", "--net", "--network", "none") != host_ns("net")
    r = as_apptainer("exec", "--net", "--network", "none", bash_sif, "sh", "-c",
                     "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip -o link show lo")
    assert r.stdout.splitlines()[0] == "lo" and len(r.stdout.splitlines()) == 2, r.stdout
    assert ",UP" in r.stdout.splitlines()[1]    # loopback is up
    r = as_apptainer("exec", "--network", "bridge", bash_sif, "true")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "only 'none'" in r.stderr


def test_cwd_pwd_userns(as_apptainer, bash_sif):
    r = as_apptainer("exec", "--cwd", "/opt", "-u", bash_sif, "pwd")
    assert r.stdout.strip() == "/opt", r.stderr
    r = as_apptainer("exec", "--userns", "--pwd", "/etc", bash_sif, "pwd")
    assert r.stdout.strip() == "/etc"


def test_contain_does_not_bind_home_and_containall(as_apptainer, bash_sif, test_user, shared_tmp):
    marker = f"hpccont-home-marker-{os.getpid()}"
    home = test_user.pw_dir
    r = as_apptainer("exec", bash_sif, "sh", "-c", f"touch ~/{marker} && ls ~")
    assert marker in r.stdout, r.stderr
    try:
        r = as_apptainer("exec", "--contain", bash_sif, "sh", "-c", 'ls -A ~ | wc -l; echo $HOME; pwd')
        count, h, cwd = r.stdout.split()
        assert (count, h) == ("0", home), r.stderr      # $HOME is there, empty
        r = as_apptainer("exec", "--contain", "--home", f"{shared_tmp}:/h", bash_sif, "sh",
                         "-c", "echo $HOME; ls /h >/dev/null && echo bound")
        assert r.stdout.split() == ["/h", "bound"]        # a --home given is bound anyway
        r = as_apptainer("exec", "--containall", bash_sif, "sh", "-c",
                         'ls -A ~ | wc -l; echo "[$HOSTVAR]"; echo $$', env={"HOSTVAR": "h"})
        count, hostvar, pid = r.stdout.split()
        assert (count, hostvar) == ("0", "[]") and int(pid) < 10   # clean env, PID namespace
        assert ns(as_apptainer, bash_sif, "pid", "-C") != host_ns("pid")
        assert ns(as_apptainer, bash_sif, "ipc", "-C") != host_ns("ipc")
    finally:
        os.unlink(os.path.join(home, marker))


def test_no_umask(compat_bin, bash_sif, test_user):
    """The caller's umask is passed on (Apptainer's default); --no-umask gives 0022."""
    import helpers
    from compatlib import compat_env

    def umask_inside(*flags):
        r = helpers.as_user(["sh", "-c", 'umask 027; exec "$@"', "sh", "apptainer", "exec",
                             *flags, str(bash_sif), "sh", "-c", "umask"], env=compat_env(compat_bin))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()
    assert umask_inside() == "0027"
    assert umask_inside("--no-umask") == "0022"


def test_no_mount(as_apptainer, bash_sif, shared_tmp):
    r = as_apptainer("exec", "--no-mount", "tmp,home", bash_sif, "sh", "-c",
                     "grep -c ' /tmp ' /proc/self/mountinfo; ls -A ~ | wc -l")
    assert r.stdout.split() == ["0", "0"], r.stdout + r.stderr
    r = as_apptainer("exec", bash_sif, "grep", "-c", " /tmp ", "/proc/self/mountinfo")
    assert r.stdout.strip() == "1"
    r = as_apptainer("exec", "--no-mount", "tmp", bash_sif, "pwd", cwd=shared_tmp)
    assert r.stdout.strip() == str(shared_tmp)        # the working directory is bound
    r = as_apptainer("exec", "--no-mount", "cwd,tmp", bash_sif, "pwd", cwd=shared_tmp)
    assert r.stdout.strip() not in ("", str(shared_tmp)), r.stderr
    r = as_apptainer("exec", "--no-mount", "bogus", bash_sif, "true")
    assert r.returncode == 0 and "unknown mount type 'bogus'" in r.stderr


def test_mount_docker_syntax(as_apptainer, bash_sif, shared_tmp):
    (shared_tmp / "f").write_text("via --mount\n")
    r = as_apptainer("exec", "--mount", f"type=bind,source={shared_tmp},destination=/data,ro",
                     bash_sif, "sh", "-c", "cat /data/f; touch /data/g 2>/dev/null || echo ro")
    assert r.stdout.splitlines() == ["via --mount", "ro"], r.stderr
    r = as_apptainer("exec", "--mount", f"type=bind,src={shared_tmp},dst=/d2", bash_sif,
                     "sh", "-c", "touch /d2/g && echo rw")
    assert r.stdout.strip() == "rw" and (shared_tmp / "g").exists()
    r = as_apptainer("exec", "--mount", "type=volume,src=/a,dst=/b", bash_sif, "true")
    assert r.returncode != 0 and "only 'bind'" in r.stderr


def test_scratch_and_workdir(as_apptainer, bash_sif, shared_tmp):
    r = as_apptainer("exec", "--scratch", "/scratch1,/scratch2", bash_sif, "sh", "-c",
                     "touch /scratch1/a /scratch2/b && ls /scratch1 /scratch2")
    assert r.returncode == 0 and "a" in r.stdout and "b" in r.stdout, r.stderr
    work = shared_tmp / "wd"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    r = as_apptainer("exec", "-c", "-W", work, "-S", "/s", bash_sif, "sh", "-c",
                     "touch /tmp/t1 /var/tmp/t2 /s/t3")
    assert r.returncode == 0, r.stderr
    assert (work / "tmp/t1").exists() and (work / "var_tmp/t2").exists()
    assert (work / "scratch/s/t3").exists()


def test_cpus_memory_warn_once_where_no_cgroup_is_delegated(as_apptainer, bash_sif):
    r = as_apptainer("exec", "--cpus", "1", "--memory", "256m", bash_sif, "true")
    assert r.returncode == 0
    warnings = [ln for ln in r.stderr.splitlines() if "--cpus and --memory not applied" in ln]
    assert len(warnings) == 1, r.stderr
    r = as_apptainer("exec", "--memory", "lots", bash_sif, "true")
    assert r.returncode == 2 and "--memory" in r.stderr


def test_limits_through_a_delegated_cgroup(tmp_path):
    """The cgroup v2 plan for memory and cpu, against a cgroup tree laid out as the kernel does.

    A fake tree because this host cannot have a cgroup v2 with those controllers: it is hybrid,
    and memory and cpu stay bound to their (busy) cgroup v1 hierarchies.  The delegation itself
    (moving in, enabling controllers, writing a limit) runs on the real kernel, with the one v2
    controller this host has, in tests/runtime/test_cgroup_delegation.py."""
    from hpccont.runtime import limits
    root = tmp_path / "cg"
    mine = root / "user.slice/user-1001.slice/session-1.scope"
    mine.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (mine / "cgroup.controllers").write_text("cpu memory\n")
    (mine / "cgroup.procs").write_text("")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/user-1001.slice/session-1.scope\n")
    spec, warning = limits.plan_limits("1.5", "1g", {}, root=str(root), proc_self=str(proc))
    assert warning is None
    assert spec["files"] == {"cpu.max": "150000 100000", "memory.max": str(1 << 30)}
    assert spec["path"].startswith(str(mine) + "/hpccont-") and spec["enable"] == str(mine)
    # a hybrid host: the v2 root lacks the controllers, whatever the user's cgroup says
    (root / "cgroup.controllers").write_text("hugetlb\n")
    assert "not in this host's cgroup v2 hierarchy" in limits.plan_limits(
        "1", "1g", {}, root=str(root), proc_self=str(proc))[1]
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (mine / "cgroup.controllers").write_text("memory\n")
    spec, warning = limits.plan_limits("2", None, {"SLURM_JOB_ID": "9"}, root=str(root),
                                       proc_self=str(proc))
    assert spec is None and "cpu controller" in warning and "SLURM_JOB_ID=9" in warning
    proc.write_text("4:memory:/x\n")
    assert "no unified cgroup" in limits.plan_limits("1", None, {}, root=str(root),
                                                     proc_self=str(proc))[1]


def test_shell_flag_and_fallbacks(as_apptainer, bash_sif, busybox_rootfs, world_tmp, install):
    r = as_apptainer("shell", "-s", "/bin/bash", bash_sif, "-c", 'echo "$BASH_VERSION|$APPTAINER_SHELL"')
    assert r.stdout.strip().endswith("|/bin/bash") and len(r.stdout.split("|")[0]) > 0, r.stderr
    import shutil
    import subprocess
    bare = world_tmp / "images" / "bare-rootfs"
    if not bare.exists():
        shutil.copytree(busybox_rootfs, bare, symlinks=True)
        (bare / ".singularity.d/runscript").unlink()
        (bare / ".singularity.d/test").unlink()
        (bare / "singularity").unlink()
    out = world_tmp / "images" / "bare.sqsh"
    if not out.exists():
        subprocess.run(["mksquashfs", str(bare), str(out), "-quiet", "-all-root", "-noappend"],
                       check=True, stdout=subprocess.DEVNULL)
        out.chmod(0o644)
    r = as_apptainer("test", out)
    assert r.returncode == 0 and "No test script" in r.stderr, r.stderr     # Apptainer: exit 0
    r = as_apptainer("run", out, "-c", "echo ran by sh $0")
    assert r.returncode == 0 and r.stdout.strip() == "ran by sh /bin/sh", r.stderr
    assert "No runscript found" in r.stderr
    r = as_apptainer("-q", "run", out, "-c", "true")
    assert "No runscript" not in r.stderr


def test_rocm_on_a_host_without_rocm(as_apptainer, bash_sif):
    """No ROCm here: the container runs, saying what is missing (the binding itself is tested
    against a synthetic ROCm tree in tests/rocm/)."""
    r = as_apptainer("exec", "--rocm", bash_sif, "sh", "-c", "ls -A /.singularity.d/libs | wc -l")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "hpccont: warning: rocm: no ROCm runtime (libamdhip64.so or libhsa-runtime64.so) in the ldconfig "
        "cache; the host's ROCm stack is not bound",
        "hpccont: warning: rocm: no AMD GPU device (/dev/kfd, /dev/dri/card* and renderD* missing); "
        "running without GPU access"], r.stderr
    assert r.stdout.strip() == "0"          # nothing bound (not even this host's libdrm, libelf)
