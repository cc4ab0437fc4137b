"""Stand-in for the ``pbs`` module that PBS Pro / OpenPBS gives to hook scripts.

Why a stand-in: no PBS server or MoM is packaged for Debian, so hooks cannot run under real
PBS on these machines.  This module follows the documented hook API exactly, as written in
OpenPBS's ``pbs_module(7B)`` and ``pbs_hook_attributes(7B)`` man pages, the PBS Professional
Hooks Guide, and the behaviour of OpenPBS's ``src/modules/python/pbs/v1/_svr_types.py``
(``_event``, ``_job``) and its functional tests (``test/tests/functional/pbs_hook_*``):

- ``pbs.event()`` returns the event being handled; ``event.type`` is one of the event
  constants (values from OpenPBS ``src/include/hook.h``), ``event.hook_name``,
  ``event.requestor``, ``event.job``.
- ``event.job`` has ``id``, ``Variable_List`` (a dict of the job's environment variables),
  ``Resource_List`` (indexing an unset resource gives None, booleans are Python bools),
  ``euser`` and ``egroup`` (the user and group the job runs as on the execution host),
  ``in_ms_mom()``, ``rerun()`` and ``delete()`` (MoM events only).
- ``event.progname``, ``event.argv`` (list of str) and ``event.env`` (dict-like
  ``pbs.pbs_env``) exist only in ``execjob_launch`` and are the only event attributes a hook
  may assign; reading them in another event raises ``pbs.EventIncompatibleError``; assigning
  any other attribute raises ``pbs.BadAttributeValueError``.
- ``event.accept([ecode])`` and ``event.reject([msg[, ecode]])`` end the hook by raising
  ``SystemExit``; a hook that ends without either is accepted; an unhandled exception rejects
  the event (PBS logs the traceback).
- ``pbs.hook_config_filename`` is the path of the configuration file imported with
  ``qmgr -c "import hook NAME application/x-config default FILE"``, taken from
  ``PBS_HOOK_CONFIG_FILE`` as OpenPBS does, or None.
- ``pbs.logmsg(level, msg)``, ``pbs.logjobmsg(jobid, msg)``, ``pbs.LOG_*``/``pbs.EVENT_*``.

MoM runs execution-host hooks in a separate ``pbs_python`` process that reads the event from
an input file and writes the outcome to an output file; ``pbs_python.py`` next to this module
does the same with JSON, so each hook run starts from a fresh interpreter as under PBS.
Log levels are plain integers here; PBS's numeric values differ between releases and no hook
should depend on them.
"""
import os

# Event types (OpenPBS src/include/hook.h)
QUEUEJOB = 0x01
MODIFYJOB = 0x02
RESVSUB = 0x04
MOVEJOB = 0x08
RUNJOB = 0x10
PROVISION = 0x20
EXECJOB_BEGIN = 0x40
EXECJOB_PROLOGUE = 0x80
EXECJOB_EPILOGUE = 0x100
EXECJOB_END = 0x200
EXECJOB_PRETERM = 0x400
EXECJOB_LAUNCH = 0x800
EXECHOST_PERIODIC = 0x1000
EXECHOST_STARTUP = 0x2000
EXECJOB_ATTACH = 0x4000
PERIODIC = 0x8000
EXECJOB_RESIZE = 0x20000
EXECJOB_ABORT = 0x40000
EXECJOB_POSTSUSPEND = 0x80000
EXECJOB_PRERESUME = 0x100000
MOM_EVENTS = (EXECJOB_BEGIN | EXECJOB_PROLOGUE | EXECJOB_EPILOGUE | EXECJOB_END
              | EXECJOB_PRETERM | EXECHOST_PERIODIC | EXECJOB_LAUNCH | EXECHOST_STARTUP
              | EXECJOB_ATTACH | EXECJOB_RESIZE | EXECJOB_ABORT | EXECJOB_POSTSUSPEND
              | EXECJOB_PRERESUME)

EVENT_NAMES = {
    "queuejob": QUEUEJOB, "modifyjob": MODIFYJOB, "resvsub": RESVSUB, "movejob": MOVEJOB,
    "runjob": RUNJOB, "provision": PROVISION, "execjob_begin": EXECJOB_BEGIN,
    "execjob_prologue": EXECJOB_PROLOGUE, "execjob_epilogue": EXECJOB_EPILOGUE,
    "execjob_end": EXECJOB_END, "execjob_preterm": EXECJOB_PRETERM,
    "execjob_launch": EXECJOB_LAUNCH, "exechost_periodic": EXECHOST_PERIODIC,
    "exechost_startup": EXECHOST_STARTUP, "execjob_attach": EXECJOB_ATTACH,
    "periodic": PERIODIC, "execjob_resize": EXECJOB_RESIZE, "execjob_abort": EXECJOB_ABORT,
    "execjob_postsuspend": EXECJOB_POSTSUSPEND, "execjob_preresume": EXECJOB_PRERESUME,
}

# Log classes
EVENT_ERROR = 0x0001
EVENT_SYSTEM = 0x0002
EVENT_ADMIN = 0x0004
EVENT_JOB = 0x0008
EVENT_JOB_USAGE = 0x0010
EVENT_SECURITY = 0x0020
EVENT_SCHED = 0x0040
EVENT_DEBUG = 0x0080
EVENT_DEBUG2 = 0x0100
EVENT_RESV = 0x0200
EVENT_DEBUG3 = 0x0400
EVENT_DEBUG4 = 0x0800
LOG_ERROR = 3
LOG_WARNING = 4
LOG_DEBUG = 7


class EventIncompatibleError(Exception):
    """Raised when referencing a non-existent attribute in pbs.event()."""


class BadAttributeValueError(Exception):
    """Raised when setting an attribute to an invalid value (or a read-only one)."""


class BadAttributeValueTypeError(Exception):
    pass


class UnsetAttributeNameError(Exception):
    """Raised when referencing a non-existent attribute name."""


class UnsetResourceNameError(Exception):
    pass


class pbs_env(dict):
    """``pbs.pbs_env``: a dictionary of environment variables."""


class pbs_resource(dict):
    """``Resource_List``: indexing an unset resource returns None, as in PBS."""

    def __getitem__(self, name):
        return self.get(name)


class _job:
    def __init__(self, spec):
        self.id = spec["id"]
        self.euser = spec.get("euser", "")
        self.egroup = spec.get("egroup", "")
        self.Job_Owner = spec.get("Job_Owner", "")
        self.Variable_List = pbs_env(spec.get("Variable_List", {}))
        self.Resource_List = pbs_resource(spec.get("Resource_List", {}))
        self._msmom = spec.get("in_ms_mom", True)
        self._rerun = False
        self._delete = False

    def __str__(self):
        return str(self.id)

    def in_ms_mom(self):
        return self._msmom

    def rerun(self):
        if (_EVENT.type & MOM_EVENTS) == 0:
            raise NotImplementedError("rerun(): only for mom hooks")
        self._rerun = True

    def delete(self):
        if (_EVENT.type & MOM_EVENTS) == 0:
            raise NotImplementedError("delete(): only for mom hooks")
        self._delete = True


# the only event attributes a hook may assign, and only in execjob_launch
_LAUNCH_PARAMS = ("progname", "argv", "env")


class _event:
    def __init__(self, spec):
        object.__setattr__(self, "_param", {})
        object.__setattr__(self, "type", EVENT_NAMES[spec["type"]])
        object.__setattr__(self, "hook_name", spec.get("hook_name", "hpccont_launch"))
        object.__setattr__(self, "hook_type", "site")
        object.__setattr__(self, "requestor", spec.get("requestor", "pbs_mom"))
        object.__setattr__(self, "requestor_host", spec.get("requestor_host", "localhost"))
        object.__setattr__(self, "job", _job(spec["job"]))
        if self.type == EXECJOB_LAUNCH:
            self._param["progname"] = spec.get("progname", "")
            self._param["argv"] = list(spec.get("argv", []))
            self._param["env"] = pbs_env(spec.get("env", {}))

    def accept(self, ecode=0):
        _OUTCOME["accepted"] = True
        raise SystemExit(str(ecode))

    def reject(self, emsg="", ecode=255):
        _OUTCOME["accepted"] = False
        _OUTCOME["reject_msg"] = emsg
        raise SystemExit(str(ecode))

    def __getattr__(self, key):
        param = object.__getattribute__(self, "_param")
        if key in param:
            return param[key]
        raise EventIncompatibleError(key)

    def __setattr__(self, name, value):
        if name in self._param and name in _LAUNCH_PARAMS:
            if name == "argv" and not (isinstance(value, list)
                                       and all(isinstance(a, str) for a in value)):
                raise BadAttributeValueTypeError("argv must be a list of str")
            if name == "progname" and not isinstance(value, str):
                raise BadAttributeValueTypeError("progname must be a str")
            if name == "env" and not isinstance(value, dict):
                raise BadAttributeValueTypeError("env must be a pbs_env")
            self._param[name] = value
            return
        raise BadAttributeValueError(f"event attribute '{name}' is readonly")


hook_config_filename = os.environ.get("PBS_HOOK_CONFIG_FILE") or None

_EVENT = None
_OUTCOME = {"accepted": None, "reject_msg": None}
_LOG = []


def get_hook_config_file():
    return hook_config_filename


def event():
    return _EVENT


def logmsg(level, msg):
    _LOG.append([level, str(msg)])


def logjobmsg(jobid, msg):
    _LOG.append([LOG_DEBUG, f"{jobid};{msg}"])


def get_local_nodename():
    return os.uname().nodename.split(".")[0]


def _load(spec):
    """Set up the event the next hook run sees (what MoM's input file carries)."""
    global _EVENT
    _EVENT = _event(spec)
    return _EVENT
