"""Instances as Apptainer has them, as the unprivileged user with a real image: ``instance run``
(a busybox httpd reached from the host and from ``exec instance://``), ``instance start`` with
its arguments, ``list`` in Apptainer's three formats, ``stats`` that move when the instance
works, ``stop`` with --signal / --timeout / --force, root's --user, --fakeroot and --containall
(a PID namespace) instances over ext3 overlays, and instances that end with the batch job or
job step daemon they were started under.  After each: nothing left running or mounted."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

import helpers

pytestmark = [pytest.mark.rootless, pytest.mark.timeout(300)]

# instance run IMG NAME PORT ...: a web server as the instance's process
RUNSCRIPT = """#!/bin/sh
echo "run args: $*"
mkdir -p /tmp/www
echo "hello from $APPTAINER_INSTANCE" > /tmp/www/index.html
exec httpd -f -p "127.0.0.1:$1" -h /tmp/www
"""
# instance start IMG NAME ARGS...: says its arguments, stops cleanly on SIGTERM, shrugs off
# SIGUSR1 (the loop's sleep is in the background so that a trap runs at once)
STARTSCRIPT = """#!/bin/sh
echo "start args: $*"
trap 'echo "got TERM"; exit 0' TERM
trap 'echo "ignoring USR1"' USR1
while :; do sleep 1 & wait $!; done
"""


@pytest.fixture
def hc(hpccont_user):
    """hpccont as the test user, from /tmp: a directory every container has (the caller's
    directory is bound into a container, not into an instance it joins)."""
    def run(*args, **kw):
        kw.setdefault("cwd", "/tmp")
        return hpccont_user(*args, **kw)
    return run


@pytest.fixture(scope="module")
def svc_sif(world_tmp, install):
    root = helpers.make_busybox_rootfs(world_tmp / "images" / "svc-rootfs", runscript=RUNSCRIPT)
    (root / ".singularity.d" / "startscript").write_text(STARTSCRIPT)
    out = world_tmp / "images" / "svc.sif"
    r = subprocess.run([install["hpccont"], "build", str(out), str(root)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out.chmod(0o755)
    return out


def _name(prefix):
    return f"{prefix}{os.getpid()}-{time.monotonic_ns() % 100000}"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def _listed(hc, name):
    r = hc("instance", "list", "--json", name)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["instances"]


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _members(pid):
    """PIDs in the mount namespace of ``pid`` (the instance's processes)."""
    ns = os.readlink(f"/proc/{pid}/ns/mnt")
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/ns/mnt") == ns:
                    out.append(int(p))
            except OSError:
                pass
    return out


def _all_gone(pids, image, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline and (any(_running(p) for p in pids)
                                      or helpers.fuse_processes(str(image))):
        time.sleep(0.1)
    assert not [p for p in pids if _running(p)]
    assert not helpers.fuse_processes(str(image))
    assert not helpers.mounts_mentioning(str(image))


def _stats(hc, name):
    r = hc("instance", "stats", "--json", name)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _burner(install, name):
    """A CPU burner joined to the instance, in the background (instance stop ends it)."""
    return subprocess.Popen(
        ["runuser", "-u", helpers.TEST_USER, "--", "env", "-i", "PATH=/usr/bin:/bin",
         f"HOME=/home/{helpers.TEST_USER}", f"USER={helpers.TEST_USER}", install["hpccont"],
         "exec", f"instance://{name}", "sh", "-c", "while :; do :; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")


def _cells(line):
    """A tabwriter line's cells (columns are separated by at least two spaces)."""
    return [c.strip() for c in line.split("  ") if c.strip()]


@pytest.fixture
def sigint_default():
    """Apptainer's default stop signal is SIGINT, which a process started in the background
    by a non-interactive shell ignores, and so would everything the test starts: children
    here get the default disposition (a handler, unlike SIG_IGN, is reset by exec)."""
    import signal
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_instance_run_serves_host_and_exec(hc, install, svc_sif, sigint_default):
    name, port = _name("web"), _free_port()
    r = hc("instance", "run", "--contain", svc_sif, name, port, "extra")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "INFO:    instance started successfully\n"
    stopped = None
    try:
        assert _get(port) == f"hello from {name}\n"                 # from the host
        r = hc("exec", f"instance://{name}", "sh", "-c",
                         f'echo "$APPTAINER_INSTANCE"; wget -qO- http://127.0.0.1:{port}/')
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{name}\nhello from {name}\n"            # from inside

        [e] = _listed(hc, name)
        assert set(e) == {"instance", "pid", "img", "ip", "logErrPath", "logOutPath"}
        assert (e["instance"], e["img"], e["ip"]) == (name, str(svc_sif), "")
        assert open(e["logOutPath"]).read().endswith(f"run args: {port} extra\n")
        assert e["logErrPath"].endswith(
            f"/instances/logs/{os.uname().nodename}/{helpers.TEST_USER}/{name}.err")
        pids = _members(e["pid"])

        text = hc("instance", "list", name).stdout.splitlines()
        assert text[0].split() == ["INSTANCE", "NAME", "PID", "IP", "IMAGE"]
        assert text[1].split() == [name, str(e["pid"]), str(svc_sif)]
        assert text[1].index(str(e["pid"])) == text[0].index("PID")      # tabwriter columns
        assert text[1].index(str(svc_sif)) == text[0].index("IMAGE")
        logs = hc("instance", "list", "--logs", name).stdout.splitlines()
        assert logs[0].split() == ["INSTANCE", "NAME", "PID", "LOGS"]
        assert logs[1].split() == [name, str(e["pid"]), e["logErrPath"]]
        assert logs[2].strip() == e["logOutPath"]
        assert logs[2].index("/") == logs[1].index(e["logErrPath"]) == logs[0].index("LOGS")

        # stats move: a CPU burner in the instance adds CPU time and a process
        idle = _stats(hc, name)
        burner = _burner(install, name)
        try:
            deadline = time.time() + 30
            busy = _stats(hc, name)
            while busy["pids_stats"]["current"] <= idle["pids_stats"]["current"] and \
                    time.time() < deadline:
                busy = _stats(hc, name)
            later = _stats(hc, name)
            assert busy["pids_stats"]["current"] > idle["pids_stats"]["current"]
            assert later["cpu_stats"]["cpu_usage"]["total_usage"] > \
                idle["cpu_stats"]["cpu_usage"]["total_usage"]
            assert later["memory_stats"]["usage"]["usage"] > 0
            table = hc("instance", "stats", "--no-stream", name)
            assert table.returncode == 0, table.stderr
            assert table.stderr.startswith(f"INFO:    Stats for {name} instance of {svc_sif}")
            head, row = table.stdout.splitlines()
            assert _cells(head) == ["INSTANCE NAME", "CPU USAGE", "MEM USAGE / LIMIT", "MEM %",
                                    "BLOCK I/O", "PIDS"]
            cells = _cells(row)
            assert cells[0] == name and float(cells[1].rstrip("%")) > 0, row
            assert " / " in cells[2] and cells[3].endswith("%") and " / " in cells[4], row
            assert int(cells[5]) > idle["pids_stats"]["current"], row
            # without --no-stream: a table every second until interrupted, then exit 0
            r = helpers.as_user(["timeout", "--preserve-status", "-s", "INT", "6",
                                 install["hpccont"], "instance", "stats", name], cwd="/tmp")
            assert r.returncode == 0, r.stderr
            assert r.stdout.count("INSTANCE NAME") >= 1 and "interrupted" not in r.stderr
            pids += [p for p in _members(e["pid"]) if p not in pids]
        finally:
            stopped = hc("instance", "stop", name)     # Apptainer's default: SIGINT
            burner.wait(timeout=60)
    finally:
        if stopped is None or stopped.returncode != 0:
            hc("instance", "stop", "--force", name)
    assert stopped.returncode == 0, stopped.stderr
    assert f"INFO:    Stopping {name} instance of {svc_sif} (PID={e['pid']})" in stopped.stderr
    assert "Timeout" not in stopped.stderr        # httpd and the burner end on SIGINT
    _all_gone(pids, svc_sif)
    assert _listed(hc, name) == []
    with pytest.raises(OSError):
        _get(port, timeout=0)


def test_startscript_args_and_stop_signals(hc, hpccont, svc_sif):
    names = [_name("st"), _name("st"), _name("st")]
    pids = {}
    try:
        for n in names:
            r = hc("instance", "start", "--pid-file", f"/tmp/{n}.pid", svc_sif, n,
                             "a", "b c")
            assert r.returncode == 0, r.stderr
            [e] = _listed(hc, n)
            assert open(f"/tmp/{n}.pid").read() == f"{e['pid']}\n"
            deadline = time.time() + 10
            while "start args" not in open(e["logOutPath"]).read() and time.time() < deadline:
                time.sleep(0.05)
            assert open(e["logOutPath"]).read().endswith("start args: a b c\n")
            pids[n] = (e, _members(e["pid"]))
            r = hc("exec", f"instance://{n}", "sh", "-c", 'echo "$APPTAINER_INSTANCE"')
            assert r.stdout == f"{n}\n", r.stderr
        # the other actions join it too
        r = hc("shell", f"instance://{names[0]}", input='echo "in $APPTAINER_INSTANCE"\n')
        assert r.returncode == 0 and r.stdout == f"in {names[0]}\n", r.stderr
        r = hc("test", f"instance://{names[0]}")
        assert r.returncode == 0 and r.stdout == "test-ok\n", r.stderr

        # a signal the startscript handles: it ends in time, nothing is killed
        r = hc("instance", "stop", "-s", "15", "--timeout", "60", names[0])
        assert r.returncode == 0 and "Killing" not in r.stderr, r.stderr
        assert open(pids[names[0]][0]["logOutPath"]).read().endswith("got TERM\n")
        # a signal it ignores: killed once the timeout is over
        r = hc("instance", "stop", "--signal", "usr1", "-t", "1", names[1])
        assert r.returncode == 0, r.stderr
        assert f"INFO:    Killing {names[1]} instance of {svc_sif}" in r.stderr
        assert "(Timeout)" in r.stderr
        # root looks at and stops another user's instance (--user); --force: SIGKILL at
        # once; names as globs
        r = hpccont("instance", "list", "--json", "--user", helpers.TEST_USER, names[2])
        assert r.returncode == 0, r.stderr
        assert [e["instance"] for e in json.loads(r.stdout)["instances"]] == [names[2]]
        r = hpccont("instance", "stats", "--json", "--user", helpers.TEST_USER, names[2])
        assert r.returncode == 0 and json.loads(r.stdout)["pids_stats"]["current"] >= 3, r.stderr
        r = hpccont("instance", "stop", "--force", "--user", helpers.TEST_USER,
                    names[2][:-3] + "*" + names[2][-3:])
        assert r.returncode == 0 and f"Stopping {names[2]} instance" in r.stderr, r.stderr
    finally:
        for n in names:
            hc("instance", "stop", "--force", n)
            if os.path.exists(f"/tmp/{n}.pid"):
                os.unlink(f"/tmp/{n}.pid")
    for n in names:
        _all_gone(pids[n][1], svc_sif)
        assert _listed(hc, n) == []


@pytest.mark.parametrize("argv, message", [
    (["list", "--json", "--logs"], "--json and --logs cannot be used together"),
    (["stats", "no-such-instance"], "no instance found with name 'no-such-instance'"),
    (["stop", "no-such-instance"], "no instance found with name 'no-such-instance'"),
    (["stop", "--signal", "NOSUCH", "x"], "--signal 'NOSUCH': not a signal name or number"),
    (["stop"], "name an instance to stop, or --all"),
    (["list", "--user", "root"], "only root can look at another user's instances"),
    (["start", "IMG", "bad/name"], "'bad/name' is not a valid instance name"),
    (["run", "--pid", "IMG", "ok"], "unknown option --pid"),
    (["frobnicate"], "unknown instance command 'frobnicate'"),
])
def test_instance_errors_are_one_line(hc, svc_sif, argv, message):
    r = hc("instance", *[str(svc_sif) if a == "IMG" else a for a in argv])
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_instance_ends_with_its_job_step_daemon(hc, install, svc_sif, shared_tmp):
    """Under Slurm an instance also watches the slurmstepd above it: should the keeper have
    left the step's cgroup, it still ends, with everything in it, once that daemon is gone.
    A shell named slurmstepd (a real process, killed here) stands in for the daemon."""
    stepd = shared_tmp / "slurmstepd"
    shutil.copy("/bin/sh", stepd)
    stepd.chmod(0o755)
    name = _name("job")
    out, daemon_pid = shared_tmp / "listed.json", shared_tmp / "daemon.pid"
    script = ('echo $$ > "$4"; "$0" instance start "$1" "$2" && '
              '"$0" instance list --json "$2" > "$3.tmp" && mv "$3.tmp" "$3"; exec sleep 600')
    runner = subprocess.Popen(
        ["runuser", "-u", helpers.TEST_USER, "--", "env", "-i", "PATH=/usr/bin:/bin",
         f"HOME=/home/{helpers.TEST_USER}", "SLURM_JOB_ID=4242", str(stepd), "-c", script,
         install["hpccont"], str(svc_sif), name, str(out), str(daemon_pid)])
    pids = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not out.exists() and runner.poll() is None:
            time.sleep(0.1)
        [e] = json.loads(out.read_text())["instances"]
        r = hc("exec", f"instance://{name}", "true")
        assert r.returncode == 0, r.stderr
        pids = _members(e["pid"])
        assert len(pids) >= 3              # the keeper, squashfuse and the startscript
    finally:
        if daemon_pid.exists():
            os.kill(int(daemon_pid.read_text()), 9)
        runner.wait(timeout=60)
    try:
        _all_gone(pids, svc_sif)
        assert _listed(hc, name) == []
    finally:
        hc("instance", "stop", "--force", name)


@pytest.mark.slurm
def test_instance_in_a_batch_job_is_gone_after_the_job(submit, install, hc, svc_sif, shared_tmp):
    """On the Slurm test cluster: an instance started in an sbatch job serves the job's
    steps, and the job's end takes it with everything it ran and mounted."""
    name = _name("sb")
    script = shared_tmp / "job.sh"
    h = install["hpccont"]
    script.write_text(
        "#!/bin/sh\n"
        "cd /tmp\n"
        f"{h} instance start {svc_sif} {name} in-job || exit 1\n"
        f"{h} instance list --json {name} > {shared_tmp}/listed.json\n"
        f"srun {h} exec instance://{name} sh -c 'echo step sees $APPTAINER_INSTANCE'\n"
        # the instance's processes, as the job leaves them
        f"k=$(sed -n 's/.*\"pid\": \\([0-9]*\\).*/\\1/p' {shared_tmp}/listed.json)\n"
        'ns=$(readlink /proc/$k/ns/mnt)\n'
        'for p in /proc/[0-9]*; do [ "$(readlink $p/ns/mnt 2>/dev/null)" = "$ns" ] && '
        f'echo ${{p#/proc/}}; done > {shared_tmp}/members.txt\n'
        "exit 0\n")
    script.chmod(0o755)
    out = shared_tmp / "job.out"
    r = submit("sbatch", "--wait", "-o", str(out), str(script), timeout=180)
    assert r.returncode == 0, r.stderr + out.read_text()
    assert f"step sees {name}" in out.read_text(), out.read_text()
    [e] = json.loads((shared_tmp / "listed.json").read_text())["instances"]
    assert open(e["logOutPath"]).read().endswith("start args: in-job\n")
    members = [int(p) for p in (shared_tmp / "members.txt").read_text().split()]
    assert e["pid"] in members and len(members) >= 3, members   # keeper, squashfuse, script
    try:
        _all_gone(members, svc_sif)
        assert _listed(hc, name) == []
    finally:
        hc("instance", "stop", "--force", name)


def _subordinate_start(user=helpers.TEST_USER):
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return None
    for f in ("/etc/subuid", "/etc/subgid"):
        starts = [int(line.split(":")[1]) for line in open(f) if line.startswith(user + ":")]
        if not starts:
            return None
    return [int(line.split(":")[1]) for line in open("/etc/subuid")
            if line.startswith(user + ":")][0]


def _ext3_owner(img, path):
    """(uid, gid) stored in the ext3 image for ``path``, read by debugfs (e2fsprogs) once no
    fuse2fs serves it (the last one writes back after its container has ended)."""
    deadline = time.time() + 20
    while time.time() < deadline and _fuse2fs_serving(img):
        time.sleep(0.05)
    assert not _fuse2fs_serving(img)
    r = subprocess.run(["debugfs", "-R", f"stat {path}", str(img)], capture_output=True,
                       text=True)
    words = r.stdout.split()
    return int(words[words.index("User:") + 1]), int(words[words.index("Group:") + 1])


def _fuse2fs_serving(img):
    for pid in os.listdir("/proc"):
        if pid.isdigit() and _running(int(pid)):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"fuse2fs") and str(img).encode() in cmd:
                return True
    return False


def test_fakeroot_instance_with_an_ext3_overlay(hc, svc_sif, user_dir, test_user):
    """exec instance:// joins a --fakeroot instance as root (its one user namespace, with the
    user's subordinate ids behind root when they exist); what root writes stays in the
    overlay after stop, stored with host ids: root's files the user's, uid 5's the fifth
    subordinate id's, as a kernel mount on the host would store them."""
    img = user_dir / "inst.img"
    assert hc("overlay", "create", img).returncode == 0
    name = _name("fr")
    r = hc("instance", "start", "--fakeroot", "--overlay", img, svc_sif, name)
    assert r.returncode == 0, r.stderr
    try:
        [e] = _listed(hc, name)
        pids = _members(e["pid"])
        r = hc("exec", f"instance://{name}", "sh", "-c",
               'id -u; echo "$USER $APPTAINER_INSTANCE" > /opt/by-root; cat /opt/by-root')
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"0\nroot {name}\n"
    finally:
        stopped = hc("instance", "stop", "--signal", "TERM", name)
    assert stopped.returncode == 0, stopped.stderr
    _all_gone(pids, svc_sif)
    assert not helpers.mounts_mentioning(str(img))
    r = hc("exec", "--overlay", f"{img}:ro", svc_sif, "cat", "/opt/by-root")
    assert r.returncode == 0 and r.stdout == f"root {name}\n", r.stderr
    assert _ext3_owner(img, "/upper/opt/by-root") == (test_user.pw_uid, test_user.pw_gid)
    start = _subordinate_start()
    r = hc("exec", "--fakeroot", "--overlay", img, svc_sif, "sh", "-c",
           "touch /opt/theirs && chown 5:7 /opt/theirs && stat -c '%u %g' /opt/theirs")
    if start is None:         # a single mapping: no id 5 to give it to, as in Apptainer
        assert r.returncode != 0
        return
    assert r.returncode == 0 and r.stdout == "5 7\n", r.stderr
    uid, gid = _ext3_owner(img, "/upper/opt/theirs")
    assert uid == start + 4 and gid > 0 and gid != test_user.pw_gid
    r = hc("exec", "--overlay", f"{img}:ro", svc_sif, "stat", "-c", "%u", "/opt/theirs")
    assert r.stdout == "65534\n", r.stderr        # not the user's without --fakeroot


def test_root_never_signals_what_a_forged_registry_names(hpccont, hc, test_user, svc_sif):
    """A registry file is the user's to write: root's ``stop --user`` acts only on that
    user's processes, whatever keeper the file names.  Here it names a process of the user
    in a mount namespace of its own, which a process of root's has entered too."""
    keeper = subprocess.Popen(["runuser", "-u", helpers.TEST_USER, "--", "unshare", "-Urm",
                               "sleep", "300"])
    roots = None
    try:
        pid = _descendant(keeper.pid, "sleep")
        roots = subprocess.Popen(["nsenter", f"--mount=/proc/{pid}/ns/mnt", "sleep", "300"])
        deadline = time.time() + 10
        while time.time() < deadline and pid not in _members(roots.pid):
            time.sleep(0.05)
        assert roots.pid in _members(pid)
        start = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
        name = _name("forged")
        assert hc("instance", "list").returncode == 0          # the state directory exists
        path = f"/tmp/hpccont-{test_user.pw_uid}/instance-{name}.json"
        with open(path, "w") as f:
            json.dump({"name": name, "image": str(svc_sif), "keeper": pid,
                       "keeper_start": start, "uid": test_user.pw_uid, "user": "x",
                       "logs": {"out": "/dev/null", "err": "/dev/null"}}, f)
        os.chown(path, test_user.pw_uid, test_user.pw_gid)
        r = hpccont("instance", "stop", "--force", "--user", helpers.TEST_USER, name)
        assert r.returncode == 0 and f"Stopping {name} instance" in r.stderr, r.stderr
        assert keeper.wait(timeout=30) is not None              # the user's process went
        assert roots.poll() is None and _running(roots.pid)     # root's lives on
    finally:
        for p in (keeper, roots):
            if p is not None:
                p.kill()
                p.wait()
        hc("instance", "list")


def _descendant(pid, comm, timeout=10.0):
    """The first process below ``pid`` named ``comm``."""
    deadline = time.time() + timeout
    while True:
        todo, seen = [pid], []
        while todo:
            p = todo.pop()
            kids = [int(c) for c in os.listdir("/proc") if c.isdigit() and _parent(int(c)) == p]
            seen += kids
            todo += kids
        for p in seen:
            try:
                if open(f"/proc/{p}/comm").read().strip() == comm:
                    return p
            except OSError:
                pass
        assert time.time() < deadline, f"no {comm} below {pid}"
        time.sleep(0.05)


def _parent(pid):
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def test_containall_instance_has_its_own_pid_namespace(hc, svc_sif, user_dir):
    """--containall (so --pid): the keeper is PID 1 of the instance's PID namespace, which
    the startscript and every exec instance:// command are in; stop ends it, its ext3
    overlay written back, nothing left."""
    img = user_dir / "pid.img"
    assert hc("overlay", "create", img).returncode == 0
    name = _name("pid")
    r = hc("instance", "start", "--containall", "--overlay", img, svc_sif, name, "p")
    assert r.returncode == 0, r.stderr
    try:
        [e] = _listed(hc, name)
        pids = _members(e["pid"])
        r = hc("exec", f"instance://{name}", "sh", "-c",
               'echo "$$ $APPTAINER_INSTANCE"; ps -o pid,args; echo kept > /opt/pid-ns')
        assert r.returncode == 0, r.stderr
        first, *table = r.stdout.splitlines()
        assert first.split()[1] == name and int(first.split()[0]) < 100, r.stdout
        shown = {int(line.split()[0]): line for line in table[1:]}
        assert "hpccont" in shown[1]                       # the keeper, as PID 1
        assert any("startscript" in line for line in shown.values()), r.stdout
        assert max(shown) < 100 and len(shown) < 20        # not the host's processes
    finally:
        stopped = hc("instance", "stop", "--signal", "TERM", "--timeout", "60", name)
    assert stopped.returncode == 0 and "Killing" not in stopped.stderr, stopped.stderr
    # Every process of the workload gets the signal: the loop's background child, caught just
    # after its fork and before its exec, may run the inherited trap too.
    log = open(e["logOutPath"]).read()
    assert log.startswith("start args: p\ngot TERM\n") and log.endswith("got TERM\n"), log
    _all_gone(pids, svc_sif)
    assert not helpers.mounts_mentioning(str(img))
    r = hc("exec", "--overlay", f"{img}:ro", svc_sif, "cat", "/opt/pid-ns")
    assert r.returncode == 0 and r.stdout == "kept\n", r.stderr
