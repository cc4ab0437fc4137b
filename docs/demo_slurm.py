#!/opt/hpccont/venv/bin/python
"""The main job under Slurm: a private one-node cluster on localhost (munged, slurmctld,
slurmd), the SPANK plugin built here, and the image run with ``srun --container=IMAGE``.

    docs/demo_slurm.py IMAGE [USER]

Run as root (it starts the daemons); the job is submitted as USER.  Nothing under /etc/slurm
is touched: the cluster uses a private config directory and is stopped at the end.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0:0] = [str(REPO / "tests"), str(REPO / "tests" / "slurm")]
import helpers  # noqa: E402
from cluster import SlurmCluster  # noqa: E402


def main(image: str, user: str) -> int:
    hpccont = subprocess.run(["sh", "-c", "command -v hpccont"], capture_output=True,
                             text=True).stdout.strip() or "/usr/local/bin/hpccont"
    build = Path(tempfile.mkdtemp(prefix="hpccont-demo-spank-"))
    build.chmod(0o755)
    subprocess.run(["make", "-s", "-C", str(REPO / "spank_plugin"), f"O={build}"], check=True)
    cluster = SlurmCluster(cli_filter=str(REPO / "spank_plugin" / "cli_filter.lua"))
    cluster.plugstack = f"required {build}/hpccont_spank.so hpccont={hpccont}\n"
    cluster.start()
    try:
        out = Path(tempfile.mkdtemp(prefix="hpccont-demo-out-"))
        out.chmod(0o777)
        steps = (["srun", "-n", "2", f"--container={image}", "sh", "-c",
                  'echo "task $SLURM_PROCID of $SLURM_NTASKS: $(id -un), cgroup $(cut -d: -f3 /proc/self/cgroup | grep -m1 job)"'],
                 ["sbatch", "--wait", "-o", f"{out}/batch.out", f"--container={image}", "--wrap",
                  'echo "batch script in $APPTAINER_NAME as $(id -un), cgroup $(cut -d: -f3 /proc/self/cgroup | grep -m1 job)"'])
        for argv in steps:
            print("$", " ".join(argv[:5]), "...")
            r = helpers.as_user(["sh", "-c", 'cd /tmp && exec "$@"', "sh", *argv], user=user,
                                env=cluster.env)
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
            if r.returncode != 0:
                return r.returncode
        sys.stdout.write((out / "batch.out").read_text())
        subprocess.run(["rm", "-rf", str(out)])
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(build), str(cluster.dir)])
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else helpers.TEST_USER))
