#!/usr/bin/env python3
"""MPI ping-pong, native vs hybrid vs bind, Open MPI and MPICH, in one run; prints medians.

    sudo python3 bench/mpi/run.py [--rounds 5] [--reps 10] [--openmpi IMG] [--mpich IMG]
    sudo /opt/hpccont/venv/bin/python bench/mpi/run.py --no-local --nodes2-rounds 12

Two ranks on this node.  ``pingpong.c`` is compiled on the host by each MPI's mpicc and bound
into the container (-B), so all three variants run the same binary: natively, in the image with
the image's MPI (hybrid), and in the image with the host's MPI bound in (bind).  Variants are
interleaved round by round so that load from other users of the machine spreads over all of
them.  Images default to the ones the MPI tests build (Debian 12 + Open MPI / MPICH).

The 2-node rows (``--no-nodes2`` skips them) run Open MPI under ``srun -N2 -n2 --mpi=pmix`` on
a cluster of two network-namespace nodes (tests/slurm/multinode.py, the plugin built from this
tree), as the unprivileged test user, TCP between the nodes (``OMPI_MCA_btl=self,tcp`` on the
cluster's subnet).  The program is ``mpitest pingpong`` (tests/mpi/mpitest.c): compiled on the
host for the native row, and the same source compiled by the same ``mpicc`` in the test image
(/opt/mpitest/mpitest) for the container rows: hybrid and bind, each through the plugin
(``--container=IMG``) and through ``container-exec``.  Launches alternate variant by variant,
round by round; the table gives the best launch of each variant (lowest latency, highest
bandwidth; each launch's own figure is its best repetition), with the median launch beside it.
Run it with an interpreter the test user can execute (the venv), since hpccont's launchers for
the nodes are written with it.
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


def default_images(names=tuple(FAMILIES)) -> dict:
    import importlib.util
    sys.path.insert(0, str(REPO / "tests"))
    spec = importlib.util.spec_from_file_location("mpi_images", REPO / "tests/mpi/conftest.py")
    images = importlib.util.module_from_spec(spec)   # builds and caches the test images
    spec.loader.exec_module(images)
    return {name: images.build_image(name) for name in names}


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
    return parse_samples(r.stdout)


def parse_samples(stdout: str) -> dict:
    out = {"lat8": [], "bw1m": []}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in out:
            out[key].append(float(value))
    return out


# 2-node rows: label -> arguments between ``srun ...`` and the program's own arguments.
MPITEST_IN_IMAGE = "/opt/mpitest/mpitest"
NODES2_VARIANTS = (
    ("native", lambda img, host_bin: [str(host_bin)]),
    ("hybrid, --container", lambda img, _b: [f"--container={img}", MPITEST_IN_IMAGE]),
    ("hybrid, container-exec", lambda img, _b: ["container-exec", str(img), MPITEST_IN_IMAGE]),
    ("bind, --container --container-mpi=bind",
     lambda img, _b: [f"--container={img}", "--container-mpi=bind", MPITEST_IN_IMAGE]),
    ("bind, container-exec --mpi bind",
     lambda img, _b: ["container-exec", "--mpi", "bind", str(img), MPITEST_IN_IMAGE]),
)


def nodes2(image: Path, rounds: int, reps: int) -> int:
    """Open MPI across two namespace nodes over TCP, native vs hybrid vs bind."""
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "tests" / "slurm"))
    import helpers
    from cluster import remove_tree, site_dir
    from multinode import MultiNodeCluster
    helpers.ensure_test_user()
    work = site_dir("bench-mpi-")            # outside /tmp: each node has its own /tmp
    cluster = MultiNodeCluster(nodes=2, cli_filter=str(REPO / "spank_plugin" / "cli_filter.lua"))
    results = {label: {"lat8": [], "bw1m": []} for label, _ in NODES2_VARIANTS}
    try:
        lib = helpers.copy_package(work / "lib")
        bins = helpers.write_launchers(work / "bin", lib)
        (work / "spank").mkdir()
        subprocess.run(["make", "-s", "-C", str(REPO / "spank_plugin"), f"O={work / 'spank'}"],
                       check=True, stdout=subprocess.DEVNULL)
        host_bin = work / "mpitest-openmpi"
        subprocess.run(["mpicc", "-O2", "-o", str(host_bin), str(REPO / "tests/mpi/mpitest.c")],
                       check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        cluster.plugstack = (f"required {work / 'spank' / 'hpccont_spank.so'} "
                             f"hpccont={bins['hpccont']} accounting={cluster.log_dir}/steps.jsonl\n")
        cluster.start()
        env = dict(cluster.env, PATH=f"{work / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                   OMPI_MCA_btl="self,tcp", OMPI_MCA_btl_tcp_if_include=cluster.cidr)
        # Both nodes are the same two CPUs: Slurm's default binding would put each node's one
        # task on its CPU 0, the two ranks on one core.  Unbound, the kernel spreads them.
        srun = ["srun", "-N2", "-n2", "--mpi=pmix", "--cpu-bind=none"]

        def launch(label, argv):
            r = helpers.as_user(["sh", "-c", 'cd "$0" && exec "$@"', str(work), *srun, *argv,
                                 "pingpong", str(reps)], env=env, timeout=600)
            got = parse_samples(r.stdout)
            if r.returncode != 0 or not got["lat8"]:
                raise SystemExit(f"2 nodes / {label} failed (rc {r.returncode}): "
                                 f"{r.stdout[-300:]} {r.stderr.strip()[-1500:]}")
            return got

        for label, make in NODES2_VARIANTS:   # warm-up: page cache, slurmd's first step
            launch(label, make(image, host_bin))
        for _round in range(rounds):
            for label, make in NODES2_VARIANTS:
                got = launch(label, make(image, host_bin))
                results[label]["lat8"].append(min(got["lat8"]))
                results[label]["bw1m"].append(max(got["bw1m"]))
    finally:
        cluster.stop()
        remove_tree(work)
    base = results["native"]
    bl, bb = min(base["lat8"]), max(base["bw1m"])
    print("\n2 nodes (network namespaces), Open MPI over TCP, srun -N2 -n2 --mpi=pmix")
    print("| variant | latency 8 B (us, best) | vs native | median launch | "
          "bandwidth 1 MiB (MiB/s, best) | vs native | median launch |")
    print("|---|---|---|---|---|---|---|")
    for label, _ in NODES2_VARIANTS:
        r = results[label]
        lat, bw = min(r["lat8"]), max(r["bw1m"])
        print(f"| {label} | {lat:.2f} | {100 * (lat / bl - 1):+.1f}% | "
              f"{statistics.median(r['lat8']):.2f} | {bw:.0f} | {100 * (bw / bb - 1):+.1f}% | "
              f"{statistics.median(r['bw1m']):.0f} |")
    print(f"\nbest of {rounds} alternating launches per variant, {reps} repetitions per launch "
          f"(1000 x 8 B and 20 x 1 MiB round trips each), {os.cpu_count()} CPUs, "
          f"unprivileged ({helpers.TEST_USER})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10, help="repetitions per launch")
    ap.add_argument("--openmpi", type=Path,
                    help="Open MPI image (the 2-node rows run its /opt/mpitest/mpitest pingpong)")
    ap.add_argument("--mpich", type=Path)
    ap.add_argument("--no-local", dest="local", action="store_false",
                    help="skip the one-node rows (mpirun, Open MPI and MPICH)")
    ap.add_argument("--no-nodes2", dest="nodes2", action="store_false",
                    help="skip the 2-node rows (srun on namespace nodes, Open MPI over TCP)")
    ap.add_argument("--nodes2-rounds", type=int, default=10,
                    help="launches per variant in the 2-node rows (best of these)")
    args = ap.parse_args()
    images = {"openmpi": args.openmpi, "mpich": args.mpich}
    needed = [k for k in (FAMILIES if args.local else ("openmpi",)) if not images[k]]
    if needed:
        images.update(default_images(needed))
    if args.local:
        local(args, images)
    if args.nodes2:
        nodes2(images["openmpi"], args.nodes2_rounds, args.reps)
    return 0


def local(args, images: dict) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
