"""request -> LaunchPlan: every decision about a launch, made without touching the kernel.

``make_plan`` reads the site config, identifies the image (a stat and one pread), asks the host
adapters for their additions and returns plain data.  ``--dry-run`` prints the result; tests
compare plans directly.  Nothing here needs privileges or mounts anything.
"""
from __future__ import annotations

import os

from ..errors import BindError, ImageError, PolicyError, UsageError
from . import mounts as M
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
    mounts = _mounts(req, cfg, ident, home_src, home_dst, cwd, additions)
    env, overrides = container_environment(
        environ, cleanenv=req.cleanenv, user_env=req.env, home=ident.home, user=ident.user,
        image_path=image.path, ld_paths=additions.ld_library_path, bin_paths=additions.path)
    env.update(additions.env)
    overrides.update(additions.env)
    env_dirs = ["/.singularity.d/env"] + ([f"/scif/apps/{req.app}/scif/env"] if req.app else [])
    return LaunchPlan(image=image, mode=mode, identity=ident, mounts=mounts, env=env,
                      env_overrides=overrides, env_dirs=env_dirs,
                      cwd=_workdir(req, mounts, cwd, ident.home), argv=_argv(req),
                      writable_tmpfs=req.writable_tmpfs, join=req.join,
                      warnings=list(additions.warnings))


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
    M.refuse_climbing(dst)
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
    M.check_bind_source(Bind(src=src, dst=dst), mcfg["user_bind_denylist"])
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


def _mounts(req, cfg, ident, home_src, home_dst, cwd, additions: HostAdditions) -> list[Mount]:
    mcfg = cfg["mounts"]
    contain = req.contain or req.containall
    out = M.default_mounts(mcfg, contain=contain)
    if req.mount_home and not req.containall and mcfg["home"]:
        src = home_src or ident.home
        if home_src:
            _check_home_source(mcfg, home_src, home_dst)
        if os.path.isdir(src):
            out.append(Mount(kind="bind", target=home_dst or ident.home, source=src,
                             why="--home" if home_src else "default: home directory"))
    elif req.containall or not req.mount_home:
        out.append(Mount(kind="tmpfs", target=ident.home, why="private home (no host home)"))
    if (mcfg["cwd"] and not contain and cwd not in ("/",) and not any(
            m.kind == "bind" and M.under(cwd, m.target) and m.source == m.target for m in out)):
        out.append(Mount(kind="bind", target=cwd, source=cwd, why="default: working directory"))
    for spec in mcfg["binds"]:
        for b in M.parse_binds([spec]):
            out.append(M.Mount(kind="bind", target=b.dst, source=b.src, readonly=b.readonly,
                               optional=True, why="site config: mounts.binds"))
    if req.binds and not mcfg["user_binds"]:
        raise PolicyError("user bind mounts are disabled by the site configuration")
    for b in req.binds:
        M.check_bind_source(b, mcfg["user_bind_denylist"])
        out.append(M.bind_mount(b, "user -B"))
    for b in req.scheduler_binds:
        out.append(M.bind_mount(b, "batch system: step files"))
    out += additions.mounts
    out.append(Mount(kind="passwd", target="/etc/passwd", why="identity: user entry"))
    out.append(Mount(kind="group", target="/etc/group", why="identity: group entry"))
    return M.dedupe(out)


def _workdir(req: ContainerRequest, mounts: list[Mount], cwd: str, home: str) -> str:
    """--pwd, else the caller's directory when the container can see it, else $HOME."""
    if req.pwd:
        if not req.pwd.startswith("/"):
            raise UsageError(f"--pwd must be an absolute path, not {req.pwd!r}")
        return req.pwd
    visible = any(m.kind == "bind" and m.source == m.target and M.under(cwd, m.target)
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
