"""What the SPANK plugin hands over: plugstack arguments, the step id, the options as typed.

The C side (spank_plugin/) only collects strings; they are parsed here, into plain data, for the
task, prepare and record commands alike.
"""
from __future__ import annotations

TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, List, Optional

from ...errors import SchedulerError
from ...record import factory, record
from ..common import yes_no

# Plugstack arguments (``key=value`` after the plugin path) and their defaults.
PLUGSTACK_DEFAULTS: Dict[str, str] = {
    "hpccont": "/usr/bin/hpccont",            # the executable the plugin execs
    "image_dir": "",                          # ':'-separated dirs for bare names (--container=pytorch)
    "wrap_batch": "yes",                      # run the batch script itself in the container
    "accounting": "/var/log/hpccont/slurm-steps.jsonl",   # per-node log of image + digest per step
    "admin_comment": "yes",                   # also put the image + digest in the job's AdminComment
    "slurm_conf": "",                         # slurm.conf for scontrol when not the default one
    "prepare_timeout": "300",                 # seconds the plugin waits for prepare (read in C)
}

# Arguments that moved elsewhere: refused with where they went, never silently ignored.
RETIRED = {
    "require_signature": "set signatures.require in the site config (hpccont.yaml), the one "
                         "switch every launch path enforces",
}

IMAGE_OPTION = "hpccont-image"                # the plugin's name for --container (cli_filter maps it)

# Slurm's special step ids (slurm.h) -> the name used in keys, logs and ``sacct``.
SPECIAL_STEPS = {
    0xFFFFFFFA: "interactive",
    0xFFFFFFFB: "batch",
    0xFFFFFFFC: "extern",
    0xFFFFFFFD: "pending",
}

# step kind -> does a container request apply to it?  (``wrap_batch`` handled by ``_wraps``.)
STEP_KINDS = {
    "step": True,
    "interactive": True,
    "batch": "wrap_batch",
    "extern": False,
    "pending": False,
}

@record
class PluginArgs:
    hpccont: str
    image_dirs: List[str]
    wrap_batch: bool
    accounting: str
    admin_comment: bool
    slurm_conf: str = ""
    prepare_timeout: int = 300


@record
class StepId:
    job: str
    step: str

    @property
    def key(self) -> str:
        return f"{self.job}.{self.step}"

    @property
    def kind(self) -> str:
        return self.step if self.step in STEP_KINDS else "step"


# -- parsing what the plugin hands over ---------------------------------------------------------
def _switch(key: str, value: str) -> bool:
    on = yes_no(value)
    if on is None:
        raise SchedulerError(f"plugstack.conf: {key}={value!r} must be yes or no")
    return on


def parse_plugin_args(args: List[str]) -> PluginArgs:
    values = dict(PLUGSTACK_DEFAULTS)
    for a in args:
        key, sep, value = a.partition("=")
        if key in RETIRED:
            raise SchedulerError(f"plugstack.conf: {key}= is no longer an argument: {RETIRED[key]}")
        if not sep or key not in PLUGSTACK_DEFAULTS:
            raise SchedulerError(f"plugstack.conf: unknown argument {a!r} "
                                 f"(known: {', '.join(k + '=' for k in PLUGSTACK_DEFAULTS)})")
        values[key] = value
    return PluginArgs(
        hpccont=values["hpccont"],
        image_dirs=[d for d in values["image_dir"].split(":") if d],
        wrap_batch=_switch("wrap_batch", values["wrap_batch"]),
        accounting=values["accounting"],
        admin_comment=_switch("admin_comment", values["admin_comment"]),
        slurm_conf=values["slurm_conf"],
        prepare_timeout=_seconds("prepare_timeout", values["prepare_timeout"]),
    )


def _seconds(key: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise SchedulerError(f"plugstack.conf: {key}={value!r} must be a number of seconds")
    return int(value)


@record
class JobIdentity:
    """The job's user as Slurm says it (S_JOB_UID/GID/SUPPLEMENTARY_GIDS), for root-side code."""
    uid: int
    gid: int
    groups: List[int] = factory(list)


def parse_identity(text: str) -> JobIdentity:
    """``"1001:1001:1001,27"`` (as the plugin prints it)."""
    parts = text.split(":")
    try:
        return JobIdentity(int(parts[0]), int(parts[1]),
                           [int(g) for g in parts[2].split(",") if g] if len(parts) > 2 else [])
    except (ValueError, IndexError):
        raise SchedulerError(f"bad job identity {text!r} from the SPANK plugin") from None


def parse_step(text: str) -> StepId:
    """``"12.4294967291"`` (as the plugin prints it) -> StepId("12", "batch")."""
    job, sep, step = text.partition(".")
    if not sep or not job.isdigit() or not step.isdigit():
        raise SchedulerError(f"bad step id {text!r} from the SPANK plugin")
    return StepId(job, SPECIAL_STEPS.get(int(step), step))


def parse_spank_options(pairs: List[str]) -> Dict[str, Optional[str]]:
    """``["hpccont-image=a.sif", "container-nv"]`` -> option dict in common.py's spelling."""
    found: Dict[str, Optional[str]] = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if name == IMAGE_OPTION:
            name = "container"
        found[name] = value if sep else None
    return found
