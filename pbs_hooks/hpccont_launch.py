"""PBS hook: run a job's tasks inside hpccont containers.

One hook, three MoM events (PBS allows a hook to list several events, as the bundled cgroups
hook does):

  execjob_begin   check the requested image exists and site policy allows it; reject the job
                  with a one-line reason otherwise
  execjob_launch  replace the job shell and every TM task (pbsdsh, TM mpiexec) with
                  ``hpccont exec [options] IMAGE <original program>``; never wrap twice
  execjob_end     remove whatever was left behind for the job on this host

Runs as root; every user is taken to be hostile: the paths a job names are opened with the
job user's rights, the only program started as root (the signature check) gets a fixed
environment, and job-end cleanup never follows a path the user can change (see
docs/security.md).

Users ask with ``qsub -l container=img.sif`` (a custom resource, see README.md) or
``qsub -v HPCCONT_CONTAINER=img.sif``, plus the HPCCONT_CONTAINER_* variables / container_*
resources.  Decisions live in ``hpccont.schedulers.pbs``; this file only moves data between
the PBS event and those functions.  Configuration: the JSON file imported with the hook
(``pbs.hook_config_filename``).
"""
import json
import sys

import pbs


def _log(level, msg):
    pbs.logmsg(level, "hpccont: " + msg)


def _raw_config():
    """(path, parsed JSON or {}, problem).  Read here only to learn ``pythonpath``."""
    path = pbs.hook_config_filename
    if not path:
        return None, {}, ""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        return path, {}, f"hook config {path} unreadable or not valid JSON ({e})"
    return path, (raw if isinstance(raw, dict) else {}), ""


def _resources(job, names):
    found = {}
    for name in names:
        value = job.Resource_List[name]
        if value is not None:
            found[name] = value
    return found


def _attr(job, name):
    value = getattr(job, name, None)
    return str(value) if value else ""


def _context(hp, event, hook_cfg, launch):
    job = event.job
    # euser/egroup: the paths the job names are opened with that user's rights, never root's
    # ("" when PBS gives none: refused, never taken as root).
    ctx = hp.JobContext(job_id=str(job.id),
                        variables=dict(job.Variable_List or {}),
                        resources=_resources(job, hook_cfg.resources),
                        primary=bool(job.in_ms_mom()),
                        user=_attr(job, "euser"), group=_attr(job, "egroup") or None)
    if launch:
        ctx.progname = event.progname
        ctx.argv = list(event.argv)
        ctx.env = dict(event.env)
    return ctx


def _refuse(event, job_id, message, on_reject):
    pbs.logjobmsg(job_id, "hpccont: " + message)
    _log(pbs.LOG_ERROR, f"{job_id}: {message}")
    if event.type == pbs.EXECJOB_BEGIN:
        # A bad image stays bad: deleting avoids a requeue loop unless the site prefers requeue.
        if on_reject == "requeue":
            event.job.rerun()
        else:
            event.job.delete()
    event.reject(message)


def on_begin(hp, event, hook_cfg, site):
    ctx = _context(hp, event, hook_cfg, launch=False)
    image = hp.begin_check(ctx, hook_cfg, site)
    if image and hook_cfg.debug:
        _log(pbs.LOG_DEBUG, f"{ctx.job_id}: container image {image} accepted")
    event.accept()


def on_launch(hp, event, hook_cfg, site):
    ctx = _context(hp, event, hook_cfg, launch=True)
    decision = hp.plan_launch(ctx, hook_cfg, site)
    if hook_cfg.debug:
        _log(pbs.LOG_DEBUG, f"{ctx.job_id}: {decision.reason}")
    if decision.wrap:
        event.progname = decision.progname
        event.argv = decision.argv
        for key, value in decision.env_set.items():
            event.env[key] = value
    event.accept()


def _uid(user):
    import pwd
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, TypeError):
        return None


def on_end(hp, event, hook_cfg, site):
    ctx = _context(hp, event, hook_cfg, launch=False)
    job_id = ctx.job_id
    plan = hp.plan_cleanup(job_id, site, images=hp.job_images(ctx, hook_cfg, site),
                           uid=_uid(event.job.euser))
    for problem in hp.apply_cleanup(plan, hook_cfg.cleanup_grace):
        _log(pbs.LOG_WARNING, f"{job_id}: cleanup: {problem}")
    event.accept()   # a job that already ended is never failed for its cleanup


HANDLERS = {
    pbs.EXECJOB_BEGIN: on_begin,
    pbs.EXECJOB_LAUNCH: on_launch,
    pbs.EXECJOB_END: on_end,
}


def main():
    event = pbs.event()
    handler = HANDLERS.get(event.type)
    if handler is None:
        event.accept()
    path, raw, problem = _raw_config()
    for entry in reversed(raw.get("pythonpath", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    job_id = str(event.job.id)
    try:
        from hpccont.errors import ConfigError, HpccontError
        from hpccont.schedulers import pbs as hp
    except ImportError as e:
        _refuse(event, job_id, problem or f"hook cannot import hpccont ({e}); set pythonpath "
                "in the hook config", "requeue")
    try:
        hook_cfg = hp.load_hook_config(path)
        site = hp.load_site_config(hook_cfg)
        handler(hp, event, hook_cfg, site)
    except HpccontError as e:
        if event.type == pbs.EXECJOB_END:
            _log(pbs.LOG_WARNING, f"{job_id}: {e.one_line()}")
            event.accept()
        # A broken site or hook configuration is not the job's fault: requeue, never delete.
        on_reject = "requeue" if isinstance(e, ConfigError) else hook_cfg.on_reject
        _refuse(event, job_id, e.one_line(), on_reject)


main()
