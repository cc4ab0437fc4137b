#!/usr/bin/env python3
"""Regenerate the example modules in this directory (``python3 modulefiles/make_examples.py``).

The examples are what ``hpccont module generate`` writes for an image at a typical site path;
the test suite regenerates them and fails when a template change was not carried over here.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hpccont.modules.generate import apply_plan, make_spec, plan_module  # noqa: E402
from hpccont.modules.metadata import ImageMetadata, parse_command  # noqa: E402

IMAGE = "/apps/images/pytorch-2.1.0.sif"
LABELS = {
    "org.opencontainers.image.title": "pytorch",
    "org.opencontainers.image.version": "2.1.0",
    "org.opencontainers.image.description": "PyTorch 2.1 with CUDA 12 and mpi4py",
    "org.hpccont.commands": "python python3 torchrun",
}
HELP = "PyTorch 2.1.0 for GPU nodes.\nRun training with: srun python train.py"
DIGEST = "sha256:" + "0" * 64


SITE_TREE = "/apps/modules"          # where the examples pretend to live


def write(out: str) -> None:
    """Generate into a scratch tree, then copy with the scratch path replaced by SITE_TREE."""
    import shutil
    import tempfile
    scratch = tempfile.mkdtemp(prefix="hpccont-examples-")
    try:
        generate(scratch)
        for dirpath, _, files in os.walk(scratch):
            for name in files:
                src = os.path.join(dirpath, name)
                rel = os.path.relpath(src, scratch)
                dest = os.path.join(out, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                flavour = rel.split(os.sep)[0]
                with open(src) as f:
                    text = f.read().replace(os.path.join(scratch, flavour), SITE_TREE)
                with open(dest, "w") as f:
                    f.write(text)
                os.chmod(dest, os.stat(src).st_mode & 0o777)
    finally:
        shutil.rmtree(scratch)


def generate(out: str) -> None:
    meta = ImageMetadata(IMAGE, "sif", labels=dict(LABELS), help=HELP, size=0, mtime_ns=0)
    for tcl in (False, True):
        spec = make_spec("pytorch/2.1.0", meta, nv=True, binds=["/scratch"], tcl=tcl,
                         hpccont="/usr/local/bin/hpccont",
                         container_exec="/usr/local/bin/container-exec", digest=DIGEST,
                         commands=[parse_command(c) for c in LABELS["org.hpccont.commands"].split()])
        tree = os.path.join(out, "tcl" if tcl else "lua")
        apply_plan(plan_module(spec, tree))


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "examples"))
