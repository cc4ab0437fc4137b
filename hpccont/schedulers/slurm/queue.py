"""Queue queries: what Slurm says about jobs (``hpccont slurm jobs``)."""
from __future__ import annotations

TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, Mapping, Optional


def queue_jobs(environ: Optional[Mapping[str, str]] = None) -> Dict[str, dict]:
    """jobid -> squeue --json job object ({} when squeue is missing or fails)."""
    import json
    import subprocess
    try:
        r = subprocess.run(["squeue", "--json"], capture_output=True, text=True, timeout=30,
                           env=dict(environ) if environ is not None else None)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if r.returncode != 0:
        return {}
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return {}
    return {str(j.get("job_id")): j for j in data.get("jobs", [])}
