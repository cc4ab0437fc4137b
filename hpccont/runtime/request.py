"""ContainerRequest: what the user asked for, before any policy or host lookup.

Every front end (CLI flags, SPANK options, PBS hook request, module wrapper, container-exec)
produces one of these; ``plan.make_plan`` turns it into a LaunchPlan.  Plain data only: building
a request touches no file and needs no privilege.
"""
from __future__ import annotations

from ..record import factory, record

ACTIONS = ("exec", "run", "shell", "test", "start")


@record
class Bind:
    """One ``-B src[:dst[:ro|rw]]`` entry.  ``dst`` is a path inside the container."""
    src: str
    dst: str
    readonly: bool = False

    def spec(self) -> str:
        return f"{self.src}:{self.dst}:{'ro' if self.readonly else 'rw'}"


@record
class ContainerRequest:
    image: str                                  # path (SIF, squashfs, sandbox dir) as given
    action: str = "exec"                        # one of ACTIONS
    argv: list[str] = factory(list)
    binds: list[Bind] = factory(list)
    # Binds the batch system needs in every task (its batch script, its PMIx directories): chosen
    # by the scheduler adapter, not the user, so the user-bind policy does not apply to them.
    scheduler_binds: list[Bind] = factory(list)
    env: dict[str, str] = factory(dict)      # --env K=V (already merged with --env-file)
    cleanenv: bool = False
    contain: bool = False                       # no host /tmp, /var/tmp, cwd; only $HOME
    containall: bool = False                    # contain + no host $HOME
    mount_home: bool = True
    home: str | None = None                  # --home SRC[:DST]
    pwd: str | None = None                   # --pwd inside the container
    writable_tmpfs: bool = False
    overlays: list[str] = factory(list)       # --overlay PATH[:ro] (runtime/writable.py)
    writable: bool = False                      # --writable: sandbox or SIF overlay partition
    fakeroot: bool = False                      # --fakeroot: uid 0 inside (runtime/fakeroot.py)
    nv: bool = False
    nv_strict: bool = False
    mpi: str | None = None                   # None | "hybrid" | "bind"
    app: str | None = None                   # SCIF app for run/exec/test
    join: str | None = None                  # key: tasks with the same key share one container
    dry_run: bool = False
    debug: bool = False
    # Apptainer's namespace and process flags (docs/runtime.md "Apptainer's flags").
    pid: bool = False                           # --pid: a PID namespace (with an init, --no-init: without)
    no_init: bool = False
    ipc: bool = False                           # --ipc
    uts: bool = False                           # --uts (implied by --hostname)
    hostname: str | None = None
    net: bool = False                           # --net: a network namespace
    network: str | None = None               # --network: only "none" (loopback only)
    no_umask: bool = False                      # --no-umask: 0022 instead of the caller's umask
    no_eval: bool = False                       # --no-eval: values set as given (always the case)
    no_mount: list[str] = factory(list)        # --no-mount proc,sys,dev,home,tmp,cwd,bind-paths,/PATH
    scratch: list[str] = factory(list)         # --scratch DIR: an empty directory (under --workdir)
    workdir: str | None = None               # --workdir: /tmp, /var/tmp (with --contain) from here
    rocm: bool = False                          # --rocm: the host's AMD GPU stack
    cpus: str | None = None                  # --cpus N (a delegated cgroup, else a warning)
    memory: str | None = None                # --memory BYTES[kKmMgG]
    shell: str | None = None                 # --shell for `shell` ($APPTAINER_SHELL)
    message_level: int = 1                      # -q -1 (no notes), -s -3 (errors only)
