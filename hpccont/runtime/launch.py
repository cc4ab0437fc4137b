"""The one way a container is started: a ContainerRequest in, the command exec'd in place.

The CLI (``hpccont exec|run|shell|test``), the Slurm task path, PBS and the module wrappers
all build a request and call ``launch``; none of them goes back through a command line.
Hot path: stdlib only, json only for --dry-run/--debug.
"""
from __future__ import annotations

import os
import sys

from ..image.registry import is_reference as is_registry_reference
from .request import ContainerRequest


def current_dir() -> str:
    """The logical working directory ($PWD when it names the same place, as shells keep it)."""
    try:
        real = os.getcwd()
    except FileNotFoundError:
        from ..errors import LaunchError
        raise LaunchError("the current working directory no longer exists")
    pwd = os.environ.get("PWD")
    if pwd and pwd != real:
        try:
            if os.path.samefile(pwd, real):
                return pwd
        except OSError:
            pass
    return real


def launch(req: ContainerRequest, cfg=None, environ=None, cwd=None, share=None) -> int:
    """Plan ``req`` and exec it; returns only for --dry-run (0), otherwise raises on failure.

    ``share``: --share (True) / --no-share (False) / neither (None), see runtime/share.py."""
    from .. import config
    from . import pending
    from .plan import make_plan
    pending.adopt()
    cfg = cfg if cfg is not None else config.load()
    # A plain dict: planning reads the environment many times, and each os.environ lookup
    # encodes its key and decodes the value again.
    environ = dict(os.environ) if environ is None else environ
    if req.image.startswith("instance://"):
        from .instances import attach
        req = attach(req, cfg)
    elif is_registry_reference(req.image):
        req.image = pulled(req, environ)
    plan = make_plan(req, cfg, environ, cwd if cwd is not None else current_dir())
    if req.debug:
        from .apply import Step
        Step(debug=True)("plan made (interpreter, imports, parsing, config, image, planning)")
    for w in plan.warnings if req.message_level > -3 else ():   # -s: errors only
        sys.stderr.write(f"hpccont: warning: {w}\n")
    if req.dry_run or req.debug:
        import json
        from . import share as sharing
        shown = plan.to_dict()
        info = sharing.describe(plan, cfg, environ, share)
        if info is not None:
            shown["share"] = info
        if info is None or not info.get("share"):
            from . import cold
            shown["recipe"] = cold.describe(plan, cfg, req)
        text = json.dumps(shown, indent=2) + "\n"
        (sys.stdout if req.dry_run else sys.stderr).write(text)
        if req.dry_run:
            return 0
    if plan.join:
        from .join import apply_joined
        apply_joined(plan, cfg)
    if share or cfg["runtime"].get("share", "ask") == "always" or environ.get("HPCCONT_SHARE"):
        # Only then can the launch share (runtime/share.py decides): the others skip its import.
        from . import share as sharing
        key, _ = sharing.decide(plan, cfg, environ, share)
        if key is not None:
            sharing.launch_shared(plan, cfg, key, req, environ)
    from .apply import apply
    from .cold import recorder
    apply(plan, cfg, debug=req.debug, recorder=recorder(plan, cfg, req))
    return 255  # not reached: apply execs or raises


def pulled(req: ContainerRequest, environ) -> str:
    """``exec docker://...`` (or oras://), as in Apptainer: the image is pulled into the cache
    (once: later launches and concurrent ones use the cached SIF, see image/registry/cache.py)
    and the launch runs that SIF.  Progress only on a terminal and without -q/-s."""
    from ..image.registry import pull_to_cache
    quiet = req.message_level < 1 or req.dry_run or not sys.stderr.isatty()
    return pull_to_cache(req.image, quiet=quiet, environ=environ)
