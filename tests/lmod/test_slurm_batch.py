"""A batch job that loads a container module and runs its wrappers under srun, on a real
one-node Slurm cluster (tests/slurm/cluster.py), submitted by the unprivileged user."""
import pytest

import helpers

pytestmark = [pytest.mark.slurm, pytest.mark.lmod, pytest.mark.rootless, pytest.mark.slow]


@pytest.fixture
def cluster(slurm_cluster):
    """The session's one-node cluster (tests/slurm_fixtures.py)."""
    return slurm_cluster


def test_batch_job_loads_module_and_runs_wrappers_under_srun(cluster, sif_tree, shared_tmp,
                                                             lmod_available):
    script = shared_tmp / "job.sh"
    script.write_text(f"""#!/bin/sh
#SBATCH -n 2
#SBATCH -o {shared_tmp}/job.out
. /usr/share/lmod/lmod/init/sh
export MODULEPATH={sif_tree}
module load bbtools/1.36 || exit 99
srun -n 2 sh -c 'test -e /.singularity.d/labels.json && echo "task $SLURM_PROCID inside"'
printf 'from the job script\\n' | srun -n 1 cat
srun -n 1 bbprintf '<%s>\\n' 'a b' "it's"
srun -n 1 sh -c 'exit 3'; echo "STEP_RC=$?"
image-mpi -- sh -c 'test -e /.singularity.d/labels.json && echo "rank $SLURM_PROCID in image"'
""")
    script.chmod(0o755)
    r = helpers.as_user(["sh", "-c", f'cd "{shared_tmp}" && sbatch --wait "{script}"'],
                        env=cluster.env, timeout=180)
    out = (shared_tmp / "job.out").read_text() if (shared_tmp / "job.out").exists() else ""
    assert r.returncode == 0, r.stdout + r.stderr + out + cluster.log_tail("slurmd")
    lines = out.splitlines()
    assert sorted(l for l in lines if l.startswith("task")) == ["task 0 inside", "task 1 inside"]
    assert "from the job script" in lines
    assert "<a b>" in lines and "<it's>" in lines
    assert "STEP_RC=3" in lines
    assert sorted(l for l in lines if l.startswith("rank")) == ["rank 0 in image",
                                                                 "rank 1 in image"], out
