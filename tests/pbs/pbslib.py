"""Paths and small helpers shared by the PBS tests (a module of its own: every test directory
has a conftest.py, so importing names from "conftest" would pick whichever came first)."""
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOOK = REPO / "pbs_hooks" / "hpccont_launch.py"
RUNNER = HERE / "harness" / "pbs_python.py"
DEFAULT_JOB_ID = "4242.pbsserver"


def option_args(argv, image):
    """The hpccont options between ``exec`` and the image."""
    return argv[2:argv.index(str(image))]


def job_user() -> str:
    """The job's owner in hook runs: the unprivileged test user when the tests run as root
    (the hooks open the job's paths with that user's rights), else whoever runs them."""
    import pwd
    if os.geteuid() == 0:
        import helpers
        return helpers.ensure_test_user().pw_name
    return pwd.getpwuid(os.geteuid()).pw_name
