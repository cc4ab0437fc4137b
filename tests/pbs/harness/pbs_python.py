"""Run one hook script the way MoM's ``pbs_python`` does, against the harness ``pbs`` module.

    pbs_python.py HOOK_SCRIPT EVENT.json OUTCOME.json

EVENT.json: {"type": "execjob_launch", "job": {...}, "progname": ..., "argv": [...], "env": {...}}.
The hook script is compiled and executed as ``__main__`` with ``pbs`` importable.  As in PBS:
``SystemExit`` (raised by accept/reject) ends the hook; a hook that returns without either is
accepted; an unhandled exception rejects the event and the traceback goes to the log.
OUTCOME.json: accepted, reject_msg, progname, argv, env, rerun, delete, log, exception.

Not from PBS: EVENT.json may carry "hook_environ", variables put into this process's
``os.environ`` just before the hook runs (after the interpreter started).  The security tests
use it to hand the hook an environment an attacker chose, and check that nothing the hook
starts as root inherits any of it.
"""
import json
import os
import sys
import traceback

# pbs_python is PBS's own interpreter: it sees none of the packages installed for the system or
# a virtual environment, only what the hook adds from its config's "pythonpath".
sys.path = [p for p in sys.path if not p.endswith(("site-packages", "dist-packages"))]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pbs  # noqa: E402  (the harness module next to this file)


def main(hook_path: str, event_path: str, outcome_path: str) -> int:
    with open(event_path) as f:
        spec = json.load(f)
    event = pbs._load(spec)
    os.environ.update(spec.get("hook_environ", {}))
    with open(hook_path) as f:
        code = compile(f.read(), hook_path, "exec")
    exception = None
    try:
        exec(code, {"__name__": "__main__", "__file__": hook_path})
    except SystemExit:
        pass
    except BaseException:
        exception = traceback.format_exc()
        pbs._OUTCOME["accepted"] = False
        pbs._OUTCOME["reject_msg"] = exception.strip().splitlines()[-1]
        pbs.logmsg(pbs.LOG_ERROR, exception)
    if pbs._OUTCOME["accepted"] is None:
        pbs._OUTCOME["accepted"] = True
    out = dict(pbs._OUTCOME, log=pbs._LOG, exception=exception,
               rerun=event.job._rerun, delete=event.job._delete)
    if event.type == pbs.EXECJOB_LAUNCH:
        out.update(progname=event.progname, argv=list(event.argv), env=dict(event.env))
    with open(outcome_path, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
