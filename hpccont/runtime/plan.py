"""request -> LaunchPlan: every decision about a launch, made without touching the kernel.

``make_plan`` reads the site config, identifies the image (a stat and one pread), asks the host
adapters for their additions and returns plain data.  ``--dry-run`` prints the result; tests
compare plans directly.  Nothing here needs privileges or mounts anything.
"""
from __future__ import annotations

import os

from ..errors import BindError, ImageError, PolicyError, UsageError
from . import mounts as mount_rules
from .environment import container_environment
from .identity import current_identity
from .plan_types import HostAdditions, ImageSource, LaunchPlan, Mount
from .request import ACTIONS, Bind, ContainerRequest

RUNSCRIPT = "/.singularity.d/runscript"
TESTSCRIPT = "/.singularity.d/test"
STARTSCRIPT = "/.singularity.d/startscript"


def make_plan(req: ContainerRequest, cfg: dict[str, dict], environ: dict[str, str],
              cwd: str) -> LaunchPlan:
    if req.action not in ACTIONS:
        raise UsageError(f"unknown action {req.action!r}")
    image = _open_image(req.image, cfg)
    mode = _mode(cfg)
    home_src, home_dst = _home(req)
    ident = current_identity(home_dst)
    additions = _host_additions(req, cfg, environ, image)
    if req.app:
        additions.extend(_app_additions(req.app))
    _check_namespaces(req, cfg)
    mounts = _mounts(req, cfg, ident, home_src, home_dst, cwd, additions)
    env, overrides = container_environment(
        environ, cleanenv=req.cleanenv, user_env=req.env, home=ident.home, user=ident.user,
        image_path=image.path, ld_paths=additions.ld_library_path, bin_paths=additions.path,
        action=req.action, bind_targets=[b.dst for b in req.binds], no_eval=req.no_eval)
    env.update(additions.env)
    overrides.update(additions.env)
    if req.shell and req.action == "shell":
        env["APPTAINER_SHELL"] = env["SINGULARITY_SHELL"] = req.shell
    env_dirs = ["/.singularity.d/env"] + ([f"/scif/apps/{req.app}/scif/env"] if req.app else [])
    warnings = list(additions.warnings)
    cgroup = None
    if req.cpus or req.memory:
        from .limits import plan_limits
        cgroup, warning = plan_limits(req.cpus, req.memory, environ)
        if warning:
            warnings.append(warning)
    overlays = []
    if req.overlays or req.writable or image.kind == "sif":
        from .writable import plan_overlays
        overlays = plan_overlays(req.overlays, image, req.writable, req.writable_tmpfs)
    if req.fakeroot:
        from .fakeroot import plan_fakeroot
        plan_fakeroot(req, env, overrides, warnings)
    return LaunchPlan(image=image, mode=mode, identity=ident, mounts=mounts, env=env,
                      env_overrides=overrides, env_dirs=env_dirs,
                      cwd=_workdir(req, mounts, cwd, ident.home), argv=_argv(req),
                      writable_tmpfs=req.writable_tmpfs, join=req.join,
                      warnings=warnings, pid=req.pid, init=not req.no_init, ipc=req.ipc,
                      uts=req.uts or bool(req.hostname), hostname=req.hostname, net=req.net,
                      umask=0o022 if req.no_umask else None, action=req.action,
                      message_level=req.message_level, cgroup=cgroup, overlays=overlays,
                      writable=req.writable, fakeroot=req.fakeroot)


def _check_namespaces(req: ContainerRequest, cfg: dict[str, dict]) -> None:
    """Apptainer's --network types other than "none" need CNI plugins and a privileged
    set-up: refused in one line.  A shared container (--join, instances) has its namespaces
    already: --pid, --ipc, --uts and --net cannot change them."""
    if req.network is not None:
        types = [t.strip() for t in req.network.split(",") if t.strip()]
        if types != ["none"]:
            raise PolicyError(f"--network {req.network}: only 'none' is available (a network "
                              "namespace with loopback only)")
    if req.join and (req.pid or req.net or req.uts or req.ipc) and req.action != "start":
        raise UsageError("--pid, --ipc, --uts and --net cannot be used with --join or an "
                         "instance: the shared container has its namespaces already")
    if req.hostname is not None and (not req.hostname or len(req.hostname) > 64
                                     or "/" in req.hostname):
        raise UsageError(f"--hostname {req.hostname!r}: not a valid host name")


def _open_image(path: str, cfg: dict[str, dict]) -> ImageSource:
    from ..image.source import open_image
    from .policy import check_image, enforce_signature
    image = open_image(path)
    check_image(image.path, image.kind, cfg["images"])
    enforce_signature(image, cfg["signatures"])
    if image.fs_type not in ("squashfs", "dir"):
        raise ImageError(f"{path}: {image.fs_type} partitions cannot be mounted without root "
                         "and are not supported")
    return image


def _mode(cfg: dict[str, dict]) -> str:
    """Root uses kernel mounts of a loop device; everyone else user namespaces + FUSE.

    ``runtime.rootless: always`` (or ``root_mount: fuse``) sends root down the unprivileged
    path too, e.g. on nodes without loop devices."""
    rt = cfg["runtime"]
    if os.geteuid() == 0 and rt["root_mount"] == "loop" and rt["rootless"] != "always":
        return "root"
    if os.geteuid() != 0 and cfg["runtime"]["rootless"] == "never":
        raise PolicyError("unprivileged containers are disabled by the site configuration")
    return "rootless"


def _home(req: ContainerRequest):
    if not req.home:
        return None, None
    src, _, dst = req.home.partition(":")
    if not src:
        raise UsageError(f"--home {req.home!r}: empty source")
    dst = dst or src
    if not dst.startswith("/"):
        raise UsageError(f"--home {req.home!r}: the home directory inside must be an absolute path")
    mount_rules.refuse_climbing(dst)
    return os.path.abspath(src), os.path.normpath(dst)


def _check_home_source(mcfg: dict, src: str, dst: str) -> None:
    """``--home SRC`` binds SRC: unless SRC is the caller's own home, it is a user bind, under
    the same policy as ``-B`` (``user_binds`` and the denylist)."""
    own = _account_home()
    if own and os.path.realpath(src) == os.path.realpath(own):
        return
    if not mcfg["user_binds"]:
        raise PolicyError(f"--home {src}: user bind mounts are disabled by the site "
                          "configuration (only your own home directory may be used)")
    mount_rules.check_bind_source(Bind(src=src, dst=dst), mcfg["user_bind_denylist"])
    if not os.path.isdir(src):
        raise BindError(f"--home {src}: not a directory")


def _account_home() -> str | None:
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


def _host_additions(req: ContainerRequest, cfg, environ, image: ImageSource) -> HostAdditions:
    """Host adapters are imported only when asked for: they pull in heavier modules."""
    add = HostAdditions()
    if req.nv or cfg["nvidia"]["always"]:
        from ..host.nvidia import nv_additions
        add.extend(nv_additions(req, cfg, environ))
    if req.rocm:
        from ..host.rocm import rocm_additions
        add.extend(rocm_additions(req, cfg, environ))
    if req.mpi in ("bind", "hybrid"):   # hybrid: launcher/container pairing checks only
        from ..host.mpi import mpi_additions
        add.extend(mpi_additions(req, cfg, environ, image))
    if cfg["modules"]["tree"]:
        from ..host.lmod import module_tree_additions
        add.extend(module_tree_additions(cfg))
    return add


def _app_additions(app: str) -> HostAdditions:
    """SCIF app: its variables, bin and lib directories (the layout the builder writes)."""
    from ..image.build.scif import app_env
    env = app_env(app)
    # Apptainer-built images switch paths in their 94-appsbase.sh on these names.
    env["APPTAINER_APPNAME"] = env["SINGULARITY_APPNAME"] = app
    return HostAdditions(env=env, path=[env["SCIF_APPBIN"]], ld_library_path=[env["SCIF_APPLIB"]])


# --no-mount names (Apptainer's) -> the default mounts they leave out
NO_MOUNT_TARGETS = {"proc": ("/proc",), "sys": ("/sys",), "dev": ("/dev",),
                    "tmp": ("/tmp", "/var/tmp")}
NO_MOUNT_NAMES = ("proc", "sys", "dev", "devpts", "tmp", "home", "cwd", "hostfs", "bind-paths")


def _no_mount(req: ContainerRequest, additions: HostAdditions) -> set:
    """--no-mount LIST as data: the names given (unknown ones: one warning each, as Apptainer)."""
    names = set()
    for item in req.no_mount:
        if item in NO_MOUNT_NAMES or item.startswith("/"):
            names.add(os.path.normpath(item) if item.startswith("/") else item)
        else:
            additions.warnings.append(f"--no-mount: ignoring unknown mount type {item!r}")
    return names


def _mounts(req, cfg, ident, home_src, home_dst, cwd, additions: HostAdditions) -> list[Mount]:
    """The mount list.  As Apptainer: --contain (and --containall) give a private, empty
    $HOME (unless --home names one), private /tmp and /var/tmp (from --workdir when given), a
    minimal /dev (mounts.minimal_dev) and no working-directory bind; --pid mounts a /proc of
    the new PID namespace."""
    mcfg = cfg["mounts"]
    contain = req.contain or req.containall
    skip = _no_mount(req, additions)
    out = []
    minimal = contain or mcfg["dev"] == "minimal"
    for m in mount_rules.default_mounts(
            mcfg, contain=contain, ipc=req.ipc, devpts="devpts" not in skip,
            console=mount_rules.caller_terminal() if minimal else None):
        if any(mount_rules.under(m.target, t) for name in skip
               for t in NO_MOUNT_TARGETS.get(name, ())):
            continue
        if m.why == "default: host file" and ("bind-paths" in skip or m.target in skip):
            continue
        if m.target == "/proc" and req.pid:
            m = Mount(kind="proc", target="/proc", why="--pid: /proc of the PID namespace")
        if m.target in mount_rules.CONTAINED_TMP and contain and req.workdir:
            m = Mount(kind="bind", target=m.target, source=_workdir_sub(
                req.workdir, "tmp" if m.target == "/tmp" else "var_tmp", 0o1777),
                why="--workdir with --contain")
        out.append(m)
    if req.mount_home and mcfg["home"] and "home" not in skip and (home_src or not contain):
        src = home_src or ident.home
        if home_src:
            _check_home_source(mcfg, home_src, home_dst)
        if os.path.isdir(src):
            out.append(Mount(kind="bind", target=home_dst or ident.home, source=src,
                             why="--home" if home_src else "default: home directory"))
    elif contain or not req.mount_home or "home" in skip:
        out.append(Mount(kind="tmpfs", target=ident.home, why="private home (no host home)"))
    if (mcfg["cwd"] and not contain and "cwd" not in skip and cwd not in ("/",) and not any(
            m.kind == "bind" and mount_rules.under(cwd, m.target) and m.source == m.target for m in out)):
        out.append(Mount(kind="bind", target=cwd, source=cwd, why="default: working directory"))
    for spec in mcfg["binds"]:
        for b in mount_rules.parse_binds([spec]):
            if "bind-paths" in skip or b.dst in skip or (
                    contain and b.src not in mount_rules.CONTAIN_KEEPS):
                continue
            out.append(mount_rules.Mount(kind="bind", target=b.dst, source=b.src, readonly=b.readonly,
                               optional=True, why="site config: mounts.binds"))
    for d in req.scratch:
        if not d.startswith("/"):
            raise UsageError(f"--scratch {d!r}: must be an absolute path")
        mount_rules.refuse_climbing(d)      # before normpath, which would clamp /../x to /x
        target = os.path.normpath(d)
        if req.workdir:
            base = _workdir_sub(req.workdir, "scratch", 0o750)
            out.append(Mount(kind="bind", target=target, source=_workdir_sub(
                base, target.strip("/"), 0o750), why="--scratch under --workdir"))
        else:
            out.append(Mount(kind="tmpfs", target=target, why="--scratch"))
    if req.binds and not mcfg["user_binds"]:
        raise PolicyError("user bind mounts are disabled by the site configuration")
    for b in req.binds:
        mount_rules.check_bind_source(b, mcfg["user_bind_denylist"])
        out.append(mount_rules.bind_mount(b, "user -B"))
    for b in req.scheduler_binds:
        out.append(mount_rules.bind_mount(b, "batch system: step files"))
    out += additions.mounts
    out.append(Mount(kind="passwd", target="/etc/passwd", why="identity: user entry"))
    out.append(Mount(kind="group", target="/etc/group", why="identity: group entry"))
    return mount_rules.dedupe(out)


def _workdir_sub(workdir: str, name: str, mode: int) -> str:
    """WORKDIR/name, made (as the caller) when missing, as Apptainer makes tmp, var_tmp and
    scratch/DIR there."""
    path = os.path.join(os.path.abspath(workdir), name)
    try:
        os.makedirs(path, exist_ok=True)
        if mode & 0o1000:
            os.chmod(path, mode)
    except OSError as e:
        raise BindError(f"--workdir {workdir}: cannot create {path}: {e.strerror}") from None
    return path


def _workdir(req: ContainerRequest, mounts: list[Mount], cwd: str, home: str) -> str:
    """--pwd, else the caller's directory when the container can see it, else $HOME."""
    if req.pwd:
        if not req.pwd.startswith("/"):
            raise UsageError(f"--pwd must be an absolute path, not {req.pwd!r}")
        return req.pwd
    visible = any(m.kind == "bind" and m.source == m.target and mount_rules.under(cwd, m.target)
                  and m.target not in ("/proc", "/sys", "/dev") for m in mounts)
    return cwd if visible else home


def _argv(req: ContainerRequest) -> list[str]:
    if req.app:
        return _app_argv(req)
    if req.action == "exec":
        if not req.argv:
            raise UsageError("exec needs a command to run (hpccont exec IMAGE CMD [ARGS])")
        return list(req.argv)
    if req.action == "run":
        return [RUNSCRIPT] + list(req.argv)
    if req.action == "test":
        return [TESTSCRIPT] + list(req.argv)
    if req.action == "start":
        return [STARTSCRIPT] + list(req.argv)
    if req.shell:
        return [req.shell] + list(req.argv)
    return ["/bin/sh"] + list(req.argv)   # shell: apply prefers /bin/bash when the image has it


def _app_argv(req: ContainerRequest) -> list[str]:
    """SCIF apps (Apptainer layout): /scif/apps/NAME/scif/{runscript,test}."""
    base = f"/scif/apps/{req.app}/scif"
    if req.action == "run":
        return [f"{base}/runscript"] + list(req.argv)
    if req.action == "test":
        return [f"{base}/test"] + list(req.argv)
    if req.action == "exec":
        if not req.argv:
            raise UsageError("exec needs a command to run")
        return list(req.argv)
    raise UsageError(f"--app is not supported with {req.action}")
