#!/usr/bin/env python3
"""MPI ping-pong, native vs hybrid vs bind, Open MPI and MPICH, in one run; prints medians.

    sudo python3 bench/mpi/run.py [--rounds 5] [--reps 10] [--openmpi IMG] [--mpich IMG]

Two ranks on this node.  ``pingpong.c`` is compiled on the host by each MPI's mpicc and bound
into the container (-B), so all three variants run the same binary: natively, in the image with
the image's MPI (hybrid), and in the image with the host's MPI bound in (bind).  Variants are
interleaved round by round so that load from other users of the machine spreads over all of
them.  Images default to the ones the MPI tests build (Debian 12 + Open MPI / MPICH).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAMILIES = {"openmpi": ("mpicc", ["mpirun", "-np", "2", "--bind-to", "core"]),
            "mpich": ("mpicc.mpich", ["mpirun.mpich", "-np", "2", "-bind-to", "core"])}
VARIANTS = ("native", "hybrid", "bind")


def default_images() -> dict:
    import importlib.util
    sys.path.insert(0, str(REPO / "tests"))
    spec = importlib.util.spec_from_file_location("mpi_images", REPO / "tests/mpi/conftest.py")
    images = importlib.util.module_from_spec(spec)   # builds and caches the test images
    spec.loader.exec_module(images)
    return {name: images.build_image(name) for name in FAMILIES}


def launchers(bindir: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import helpers
    helpers.write_launchers(bindir, REPO)
    return bindir


def run_once(family: str, variant: str, image: Path, binary: Path, reps: int, env: dict) -> dict:
    cc, mpirun = FAMILIES[family]
    argv = list(mpirun)
    if family == "openmpi" and os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    if variant == "native":
        argv += [str(binary), str(reps)]
    else:
        argv += ["container-exec", "--mpi", variant, "-B", f"{binary.parent}:/bench:ro",
                 str(image), f"/bench/{binary.name}", str(reps)]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{family}/{variant} failed: {r.stderr.strip()[-500:]}")
    out = {"lat8": [], "bw1m": []}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in out:
            out[key].append(float(value))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10, help="repetitions per launch")
    ap.add_argument("--openmpi", type=Path)
    ap.add_argument("--mpich", type=Path)
    args = ap.parse_args()
    images = {"openmpi": args.openmpi, "mpich": args.mpich}
    if not all(images.values()):
        built = default_images()
        images = {k: v or built[k] for k, v in images.items()}
    work = Path(tempfile.mkdtemp(prefix="hpccont-bench-mpi-"))
    os.chmod(work, 0o755)
    try:
        bins = {}
        for family, (cc, _) in FAMILIES.items():
            bins[family] = work / "bin" / f"pingpong-{family}"
            bins[family].parent.mkdir(exist_ok=True)
            subprocess.run([cc, "-O2", "-o", str(bins[family]), str(Path(__file__).with_name("pingpong.c"))],
                           check=True)
        env = dict(os.environ, PATH=f"{launchers(work / 'launch')}:{os.environ['PATH']}")
        results = {(f, v): {"lat8": [], "bw1m": []} for f in FAMILIES for v in VARIANTS}
        for _round in range(args.rounds):
            for family in FAMILIES:
                for variant in VARIANTS:
                    got = run_once(family, variant, images[family], bins[family], args.reps, env)
                    for k in got:
                        results[(family, variant)][k] += got[k]
        print("| MPI | variant | latency 8 B (us, median) | vs native | bandwidth 1 MiB (MiB/s, median) | vs native |")
        print("|---|---|---|---|---|---|")
        for family in FAMILIES:
            base = results[(family, "native")]
            bl, bb = statistics.median(base["lat8"]), statistics.median(base["bw1m"])
            for variant in VARIANTS:
                r = results[(family, variant)]
                lat, bw = statistics.median(r["lat8"]), statistics.median(r["bw1m"])
                print(f"| {family} | {variant} | {lat:.2f} | {100 * (lat / bl - 1):+.1f}% | "
                      f"{bw:.0f} | {100 * (bw / bb - 1):+.1f}% |")
        n = args.rounds * args.reps
        print(f"\n{n} samples per cell ({args.rounds} launches x {args.reps} repetitions), "
              f"{os.cpu_count()} CPUs, {'root' if os.geteuid() == 0 else 'unprivileged'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
