"""Workflow managers nobody here wrote run their containers through ``apptainer`` /
``singularity`` as hpccont installs them (``hpccont compat install``), as the test user:
Snakemake ``--sdm apptainer``, cwltool ``--singularity`` (a local image by dockerImageId in
CWL_SINGULARITY_CACHE), and Nextflow's task command line as its SingularityBuilder writes it."""
import json
import shutil

import pytest

import helpers
from compatlib import compat_env

pytestmark = pytest.mark.rootless

MARKER = "inside-image"


@pytest.fixture(scope="module")
def wf_image(bash_rootfs, world_tmp, install):
    """The bash image with a marker file only the image has and a runscript that runs its
    arguments (what cwltool's `singularity run IMG CMD` needs, as docker-made images do)."""
    import subprocess
    root = world_tmp / "images" / "wf-rootfs"
    shutil.copytree(bash_rootfs, root, symlinks=True)
    (root / "opt/marker").write_text(MARKER + "\n")
    (root / ".singularity.d/runscript").write_text('#!/bin/sh\nexec "$@"\n')
    out = world_tmp / "images" / "wf.sif"
    r = subprocess.run([install["hpccont"], "build", str(out), str(root)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    out.chmod(0o755)
    return out


def _as_user_in(cwd, argv, compat_bin, wf_venv, env=None, timeout=600):
    env = compat_env(compat_bin, env)
    env["PATH"] = f"{compat_bin}:{wf_venv}/bin:/usr/bin:/bin"
    return helpers.as_user(["sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv], env=env,
                           timeout=timeout)


def test_snakemake_two_rules_in_the_image(wf_image, shared_tmp, compat_bin, wf_venv, test_user):
    (shared_tmp / "Snakefile").write_text(f'''
rule all:
    input: "result.txt"

rule make:
    output: "data.txt"
    container: "{wf_image}"
    shell: "cat /opt/marker > {{output}}; echo name=$APPTAINER_NAME >> {{output}}; id -u >> {{output}}"

rule result:
    input: "data.txt"
    output: "result.txt"
    container: "{wf_image}"
    shell: "wc -l < {{input}} > {{output}}; cat {{input}} >> {{output}}; echo cmd=$APPTAINER_COMMAND >> {{output}}"
''')
    shared_tmp.chmod(0o777)
    r = _as_user_in(shared_tmp, ["snakemake", "--sdm", "apptainer", "--cores", "1"], compat_bin,
                    wf_venv)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "apptainer" in r.stderr and "exec" in r.stderr   # snakemake logs the command
    lines = (shared_tmp / "result.txt").read_text().splitlines()
    assert lines == ["3", MARKER, f"name={wf_image.name}", str(test_user.pw_uid), "cmd=exec"]


def test_cwltool_singularity_local_image(wf_image, shared_tmp, compat_bin, wf_venv, test_user):
    cache = shared_tmp / "cache"
    cache.mkdir(mode=0o755)
    # cwltool's name for dockerImageId "hpccont-wf" (tag latest) in CWL_SINGULARITY_CACHE
    shutil.copyfile(wf_image, cache / "hpccont-wf:latest.sif")
    script = ('cat /opt/marker > out.txt; echo "home=$HOME" >> out.txt; id -u >> out.txt; '
              'echo "leak=$HOSTVAR" >> out.txt; tail -n +3 /proc/net/dev | cut -d: -f1 | '
              'tr -d " " >> out.txt; pwd >> out.txt')
    tool = {"cwlVersion": "v1.2", "class": "CommandLineTool",
            "requirements": {"DockerRequirement": {"dockerImageId": "hpccont-wf"}},
            "baseCommand": ["sh", "-c"], "arguments": [script], "inputs": [],
            "outputs": {"out": {"type": "File", "outputBinding": {"glob": "out.txt"}}}}
    (shared_tmp / "tool.cwl").write_text(json.dumps(tool))
    subprocess_chmod(shared_tmp)
    r = _as_user_in(shared_tmp, ["cwltool", "--singularity", "--outdir", "out", "tool.cwl"],
                    compat_bin, wf_venv,
                    env={"CWL_SINGULARITY_CACHE": str(cache), "HOSTVAR": "from-host"})
    assert r.returncode == 0, r.stderr[-3000:]
    # cwltool checked `singularity --version` and sent Apptainer >= 1.1's command line
    assert "--no-eval" in r.stderr and "--network" in r.stderr and "--contain" in r.stderr
    out = (shared_tmp / "out/out.txt").read_text().splitlines()
    home = out[1].split("=", 1)[1]
    assert out[0] == MARKER and out[2] == str(test_user.pw_uid)
    assert out[3] == "leak="                    # --cleanenv
    assert out[4:-1] == ["lo"]                  # --net --network none: loopback only
    assert out[-1] == home and home != test_user.pw_dir   # --home D:D and --pwd D


def subprocess_chmod(path):
    import subprocess
    subprocess.run(["chmod", "-R", "a+rwX", str(path)], check=True)


def test_nextflow_task_line(wf_image, shared_tmp, compat_bin, test_user):
    """nextflow's SingularityBuilder: env - PATH="$PATH" singularity exec --no-home --pid
    -B WORKDIR IMG /bin/bash -c "cd WORKDIR; ..." (here the task writes .command.out)."""
    work = shared_tmp / "work" / "3f" / "0123abcd"
    work.mkdir(parents=True)
    subprocess_chmod(shared_tmp)
    # \\$ so that bash in the container expands them, not the shell running the line
    task = (f'cd {work}; cat /opt/marker > .command.out; echo pid=\\$\\$ >> .command.out; '
            'echo home=\\$(ls -A ~ | wc -l) >> .command.out; '
            "ls /proc | grep -c '^[0-9]' >> .command.out")
    line = f'env - PATH="$PATH" singularity exec --no-home --pid -B {work} {wf_image} /bin/bash -c "{task}"'
    r = helpers.as_user(["sh", "-c", f'cd {work} && {line}'], env=compat_env(compat_bin))
    assert r.returncode == 0, r.stderr
    out = (work / ".command.out").read_text().splitlines()
    assert out[0] == MARKER
    # a PID namespace: a handful of processes (init, the FUSE server, bash, ps...)
    assert int(out[1].split("=")[1]) < 10 and int(out[3]) < 10
    assert out[2] == "home=0"                   # --no-home: nothing of the host home
