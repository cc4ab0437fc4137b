"""Fuzzing bind and mount specs: ``-B``/``HPCCONT_BIND``/``APPTAINER_BIND`` lists, Docker-style
``--mount`` records, ``--home SRC[:DST]``, through the launch command line's parser, and bind
destinations resolved inside an image root full of hostile symbolic links.

Allowed outcomes: binds whose destinations are absolute, normalised and inside the container,
or the project's error (BindError, UsageError).  A destination resolved in the image root
either stays under that root or is refused: never a host path.
"""
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzlib import Outcomes, fuzz_settings, kind, mutate_text, outcome  # noqa: E402

from hpccont.cli import launch as cli_launch  # noqa: E402
from hpccont.runtime import mounts, plan  # noqa: E402
from hpccont.runtime.request import ContainerRequest  # noqa: E402

SEEDS = ["/data", "/data:/mnt", "/data:/mnt:ro", "/a:/b:rw,/c", "/scratch::ro", "rel/dir:/x",
         "/a,/b:/c:ro,/d:/e"]
MOUNT_SEEDS = ["type=bind,src=/data,dst=/mnt", "type=bind,source=/a,destination=/b,ro",
               'type=bind,"src=/a,b",dst=/c,readonly', "src=/x,target=/y\ntype=bind,src=/z,dst=/w"]
HOME_SEEDS = ["/home/u", "/home/u:/home/v", "/scratch/h:/root"]
TOKENS = [":", "::", ",", ",,", "ro", "rw", "RO", "..", "/..", "../", "/.", "./", "//", "/", "~",
          "$HOME", "type=bind", "type=volume", "src=", "dst=", "source=", "target=", "ro,",
          "image-src=/x", "id=1", "bind-propagation=shared", "=", '"', '""', "\n", "\r", " ",
          "\t", "é", "\x7f", "a" * 300, "/proc/self/root", "x:y:z:w"]
# What a command line may hold (argv and environment values cannot contain NUL).
ARGV_TOKENS = ["-B", "--bind", "--mount", "--home", "--env", "--no-home", "-B=", "--bind=/x",
               "--", "-", "--contain", "--nope", "img.sif", "true"]


def check_binds(binds: list) -> int:
    for b in binds:
        assert b.src.startswith("/") and b.dst.startswith("/"), b
        assert os.path.normpath(b.dst) == b.dst and ".." not in b.dst.split("/"), b
    return len(binds)


def from_command_line(argv: list, environ: dict):
    req = cli_launch.build_request("exec", argv, environ)
    check_binds(req.binds)
    return "binds"


def home(spec: str):
    src, dst = plan._home(ContainerRequest(image="x", action="exec", home=spec))
    if spec:
        assert src.startswith("/") and dst.startswith("/") and ".." not in dst.split("/")
    return "home"


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    """An image root whose links try every way out: absolute and relative links above it,
    loops, chains, links to the host's /etc, through ``..`` inside link targets."""
    root = tmp_path_factory.mktemp("hostile") / "root"
    for d in ("usr/lib", "var", "opt/a/b", "home"):
        (root / d).mkdir(parents=True)
    links = {"etc": "/etc", "up": "..", "upup": "../../..", "var/run": "../../../../run",
             "loop1": "loop2", "loop2": "loop1", "self": ".", "abs": "/usr/lib",
             "opt/a/b/out": "../../../../../../tmp", "chain": "abs/../../up/etc",
             "home/link": "/home/link", "proc": "/proc/self/root"}
    for name, target in links.items():
        (root / name).symlink_to(target)
    return str(root)


DESTINATIONS = ["etc", "up", "upup", "var/run", "loop1", "self", "abs", "opt/a/b/out", "chain",
                "home/link", "proc", "usr", "..", ".", "x", "usr/lib/.."]


def resolve_dst(root: str, dst: str):
    where = mounts.resolve_in_root(root, dst)
    assert where == root or where.startswith(root + "/"), (dst, where)
    return "inside"


def test_fuzz_bind_specs(hostile_root):
    seen = Outcomes()

    @fuzz_settings()
    @given(st.binary(min_size=1, max_size=40))
    def one(case):
        choice, tape = case[0] % 8, case[1:]
        if choice <= 1:                                    # -B, --bind=
            spec = mutate_text(SEEDS[case[0] % len(SEEDS)], tape, TOKENS).replace("\0", "")
            argv = ["-B", spec, "img.sif"] if choice == 0 else [f"--bind={spec}", "img.sif"]
            seen.add(kind(outcome(from_command_line, argv, {})))
        elif choice == 2:                                  # the environment's bind lists
            spec = mutate_text(SEEDS[case[0] % len(SEEDS)], tape, TOKENS).replace("\0", "")
            name = ("HPCCONT_BIND", "APPTAINER_BIND", "SINGULARITY_BINDPATH")[len(tape) % 3]
            seen.add(kind(outcome(from_command_line, ["img.sif"], {name: spec})))
        elif choice == 3:                                  # --mount
            spec = mutate_text(MOUNT_SEEDS[case[0] % len(MOUNT_SEEDS)], tape,
                               TOKENS).replace("\0", "")
            seen.add(kind(outcome(from_command_line, ["--mount", spec, "img.sif"], {})))
        elif choice == 4:                                  # --home
            spec = mutate_text(HOME_SEEDS[case[0] % len(HOME_SEEDS)], tape,
                               TOKENS).replace("\0", "")
            seen.add(kind(outcome(home, spec)))
        elif choice == 5:                                  # a whole command line
            argv = [ARGV_TOKENS[b % len(ARGV_TOKENS)] if b < 200 else
                    TOKENS[b % len(TOKENS)].replace("\0", "") for b in tape]
            seen.add(kind(outcome(from_command_line, argv, {})))
        else:                                              # destinations in a hostile root
            parts = [DESTINATIONS[b % len(DESTINATIONS)] for b in tape[:8]]
            dst = "/" + "/".join(parts)
            seen.add(kind(outcome(resolve_dst, hostile_root, dst)))

    one()
    seen.check_volume()
    for want in ("binds", "BindError", "UsageError", "home", "inside"):
        assert seen.counts.get(want), (want, seen.counts)
    print(f"bind and mount specs: {seen.total} inputs: {seen.counts}")


@pytest.mark.parametrize("dst", ["/etc/passwd", "/up/etc", "/upup/x", "/var/run/x",
                                 "/opt/a/b/out/x", "/chain/x", "/home/link/x", "/proc/x"])
def test_hostile_links_stay_inside(hostile_root, dst):
    result = outcome(resolve_dst, hostile_root, dst)
    assert kind(result) in ("inside", "BindError"), result
