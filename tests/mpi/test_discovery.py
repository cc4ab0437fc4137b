"""Host MPI discovery, dependency closure and ABI decisions, without launching anything.

InfiniBand hardware does not exist on the test machines, so the InfiniBand part (verbs library,
its provider plug-ins, /etc/libibverbs.d, /dev/infiniband) is tested on a synthetic host tree:
real ELF shared libraries compiled with gcc (so DT_NEEDED/DT_SONAME are genuine), laid out as a
Debian host with rdma-core, UCX and Open MPI would be, and regular files standing in for the
device nodes.  The real host's Open MPI and MPICH are checked against readelf and ldd.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpccont import elf
from hpccont.config import defaults
from hpccont.host import mpi
from hpccont.runtime.plan_types import ImageSource

LIBDIR = "usr/lib/x86_64-linux-gnu"
needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


def _so(root: Path, rel: str, soname: str = "", needs=(), link_dirs=()):
    """Compile a real shared library at root/rel with the given DT_NEEDED entries."""
    out = root / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".c")
    src.write_text(f"int sym_{abs(hash(rel)) % 100000}(void) {{ return 1; }}\n")
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), str(src), "-nostdlib"]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    # --no-as-needed + -l:NAME records DT_NEEDED without needing the symbols to be used.
    cmd += ["-Wl,--no-as-needed"] + [f"-L{root / d}" for d in link_dirs] + [f"-l:{n}" for n in needs]
    subprocess.run(cmd, check=True, capture_output=True)
    src.unlink()
    return out


def _link(root: Path, rel: str, target: str):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


@pytest.fixture(scope="module")
def ib_host(tmp_path_factory):
    """A synthetic host: Open MPI + UCX + rdma-core (mlx5) + a glibc stand-in."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc")
    root = tmp_path_factory.mktemp("ibhost")
    L = LIBDIR
    _so(root, f"{L}/libc.so.6", "libc.so.6")
    _so(root, f"{L}/libnl-3.so.200", "libnl-3.so.200", ["libc.so.6"], [L])
    _so(root, f"{L}/libibverbs.so.1.14.44.0", "libibverbs.so.1", ["libnl-3.so.200", "libc.so.6"], [L])
    _link(root, f"{L}/libibverbs.so.1", "libibverbs.so.1.14.44.0")
    _so(root, f"{L}/libmlx5.so.1", "libmlx5.so.1", ["libibverbs.so.1"], [L])
    _so(root, f"{L}/libibverbs/libmlx5-rdmav34.so", "", ["libmlx5.so.1", "libibverbs.so.1"], [L])
    (root / "etc/libibverbs.d").mkdir(parents=True)
    (root / "etc/libibverbs.d/mlx5.driver").write_text("driver mlx5\n")
    _so(root, f"{L}/libucs.so.0", "libucs.so.0", ["libc.so.6"], [L])
    _so(root, f"{L}/librdmacm.so.1", "librdmacm.so.1", ["libibverbs.so.1"], [L])
    _so(root, f"{L}/ucx/libuct_ib.so.0", "libuct_ib.so.0", ["libibverbs.so.1", "librdmacm.so.1"], [L])
    _so(root, f"{L}/libhwloc.so.15", "libhwloc.so.15", ["libc.so.6"], [L])
    _so(root, f"{L}/libopen-pal.so.40.30.2", "libopen-pal.so.40", ["libhwloc.so.15", "libucs.so.0"], [L])
    _link(root, f"{L}/libopen-pal.so.40", "libopen-pal.so.40.30.2")
    _so(root, f"{L}/libmpi.so.40.30.4", "libmpi.so.40", ["libopen-pal.so.40", "libc.so.6"], [L])
    _link(root, f"{L}/libmpi.so.40", "libmpi.so.40.30.4")
    _so(root, f"{L}/openmpi/lib/openmpi3/mca_btl_openib.so", "", ["libibverbs.so.1", "libopen-pal.so.40"], [L])
    (root / "dev/infiniband").mkdir(parents=True)
    for n in ("uverbs0", "rdma_cm"):
        (root / "dev/infiniband" / n).write_text("")     # stand-ins for the device nodes
    return root


@pytest.fixture
def view(ib_host):
    return mpi.HostView(root=str(ib_host), use_commands=False)


def test_synthetic_host_discovery(view):
    hosts = mpi.discover_host(defaults(), {}, view)
    assert [(h.family, h.soname, h.abi) for h in hosts] == [("openmpi", "libmpi.so.40", (40, 30, 4))]
    assert hosts[0].library == f"/{LIBDIR}/libmpi.so.40.30.4"
    assert hosts[0].version == "4.1.x"     # no release string in the stand-in: libtool series


def test_synthetic_infiniband_closure(view):
    host = mpi.discover_host(defaults(), {}, view)[0]
    b = mpi.dependency_closure(view, host)
    assert set(b.libs) == {"libmpi.so.40", "libopen-pal.so.40", "libhwloc.so.15", "libucs.so.0",
                           "libibverbs.so.1", "libnl-3.so.200", "libmlx5.so.1", "librdmacm.so.1"}
    assert "libc.so.6" not in b.libs, "the C library must stay the container's"
    assert b.libs["libibverbs.so.1"] == f"/{LIBDIR}/libibverbs.so.1.14.44.0"
    subs = {sub: (src, env) for src, sub, env in b.plugin_dirs}
    assert subs["openmpi"] == (f"/{LIBDIR}/openmpi/lib/openmpi3", "OMPI_MCA_mca_base_component_path")
    assert subs["lib/ucx"] == (f"/{LIBDIR}/ucx", None)
    assert b.host_path_dirs == ["/etc/libibverbs.d", f"/{LIBDIR}/libibverbs"]
    assert b.missing == []
    assert mpi.devices(view, defaults()) == ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0"]


def test_synthetic_bind_additions(view):
    host = mpi.discover_host(defaults(), {}, view)[0]
    b = mpi.dependency_closure(view, host)
    b.devices = mpi.devices(view, defaults())
    add = mpi.bind_additions(b, host)
    targets = {m.target: m for m in add.mounts}
    assert add.mounts[0].kind == "tmpfs" and add.mounts[0].target == mpi.PRIVATE_DIR
    assert targets["/.hpccont/mpi/lib/libmpi.so.40"].source == f"/{LIBDIR}/libmpi.so.40.30.4"
    assert targets["/.hpccont/mpi/lib/libmpi.so.40"].readonly
    assert targets["/.hpccont/mpi/lib/ucx"].source == f"/{LIBDIR}/ucx"
    assert targets["/etc/libibverbs.d"].source == "/etc/libibverbs.d"
    assert targets["/dev/infiniband/uverbs0"].kind == "dev"
    assert add.ld_library_path == [mpi.PRIVATE_LIB]
    assert add.env["OMPI_MCA_mca_base_component_path"] == "/.hpccont/mpi/openmpi"


def test_site_config_installations_win(view, ib_host):
    """An admin-named prefix is used, and only it, even when others are found elsewhere."""
    other = ib_host / "opt/mpich/lib"
    other.mkdir(parents=True)
    _so(ib_host, "opt/mpich/lib/libmpi.so.12.3.0", "libmpi.so.12")
    _link(ib_host, "opt/mpich/lib/libmpi.so.12", "libmpi.so.12.3.0")
    cfg = defaults()
    cfg["mpi"]["installations"] = ["/opt/mpich"]
    hosts = mpi.discover_host(cfg, {}, view)
    assert [(h.family, h.abi, h.source) for h in hosts] == [
        ("mpich", (12, 3, 0), "site config mpi.installations: /opt/mpich")]


def test_no_devices_when_absent(tmp_path):
    v = mpi.HostView(root=str(tmp_path), use_commands=False)
    assert mpi.devices(v, defaults()) == []


# --- real host libraries -------------------------------------------------------------------

REAL = ["/usr/lib/x86_64-linux-gnu/libmpi.so.40", "/usr/lib/x86_64-linux-gnu/libmpich.so.12"]


@pytest.mark.mpi
@pytest.mark.parametrize("lib", REAL)
def test_elf_parser_matches_readelf(lib):
    if not os.path.exists(lib) or not shutil.which("readelf"):
        pytest.skip("needs Debian's Open MPI / MPICH and binutils")
    out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", out)
    soname = re.findall(r"\(SONAME\)\s+Library soname: \[(.*?)\]", out)
    dyn = elf.file_dynamic(os.path.realpath(lib))
    assert dyn.needed == needed and [dyn.soname] == soname


@pytest.mark.mpi
def test_real_host_discovery_and_closure_covers_ldd():
    if not all(os.path.exists(p) for p in REAL):
        pytest.skip("needs Debian's Open MPI and MPICH")
    hosts = {h.family: h for h in mpi.discover_host(defaults(), os.environ)}
    assert hosts["openmpi"].version == "4.1.4" and hosts["openmpi"].abi[:2] == (40, 30)
    assert hosts["mpich"].version == "4.0.2" and hosts["mpich"].abi[:2] == (12, 2)
    for h in hosts.values():
        b = mpi.dependency_closure(mpi.HostView(), h)
        ldd = subprocess.run(["ldd", h.library], capture_output=True, text=True, check=True).stdout
        wanted = {line.split()[0] for line in ldd.splitlines() if "=>" in line}
        assert wanted - mpi.NEVER_BIND <= set(b.libs), wanted - set(b.libs)
    omp = mpi.dependency_closure(mpi.HostView(), hosts["openmpi"])
    assert "libmpich.so.12" not in omp.libs, "MPICH must not ride along with Open MPI"
    assert any(env == "OMPI_MCA_mca_base_component_path" for _d, _s, env in omp.plugin_dirs)


# --- decisions -----------------------------------------------------------------------------

def _info(family, soname, abi, version=""):
    return mpi.MpiInfo(family=family, soname=soname, abi=abi, version=version, library="/x/" + soname)


@pytest.mark.parametrize("host,container,level,words", [
    (("mpich", "libmpich.so.12", (12, 2, 2)), ("mpich", "libmpi.so.12", (12, 2, 0)), "ok", "serves"),
    (("mpich", "libmpi.so.12", (12, 3, 0)), ("mpich", "libmpich.so.12", (12, 2, 2)), "ok", "serves"),
    (("mpich", "libmpich.so.12", (12, 2, 2)), ("mpich", "libmpi.so.12", (12, 3, 0)), "refuse",
     "host minor 2 < container minor 3"),
    (("mpich", "libmpi.so.12", (12, 2, 2)), ("mpich", "libmpi.so.13", (13, 0, 0)), "refuse",
     "ABI major 12"),
    (("openmpi", "libmpi.so.40", (40, 30, 4)), ("openmpi", "libmpi.so.40", (40, 20, 0)), "ok", "serves"),
    (("openmpi", "libmpi.so.40", (40, 20, 0)), ("openmpi", "libmpi.so.40", (40, 30, 4)), "refuse", "older"),
])
def test_abi_rules(host, container, level, words):
    v = mpi.abi_check(_info(*host), _info(*container))
    assert v.level == level and words in v.reason


def test_family_mismatch_names_both_in_one_line():
    v = mpi.abi_check(_info("openmpi", "libmpi.so.40", (40, 30, 4), "4.1.4"),
                      _info("mpich", "libmpich.so.12", (12, 2, 2), "4.0.2"))
    assert v.level == "refuse"
    assert v.reason == ("host MPI is Open MPI 4.1.4 (libmpi.so.40) but the container's is MPICH "
                        "4.0.2 (libmpich.so.12): different MPI families are not ABI compatible")


@pytest.mark.parametrize("env,launcher", [
    ({"OMPI_COMM_WORLD_SIZE": "2", "PMIX_RANK": "0"}, "openmpi"),
    ({"PMI_RANK": "0", "PMI_FD": "6", "HYDI_CONTROL_FD": "7"}, "hydra"),
    ({"SLURM_STEP_ID": "0", "PMIX_RANK": "0", "PMIX_NAMESPACE": "slurm.pmix.3.0"}, "slurm-pmix"),
    ({"SLURM_STEP_ID": "0", "PMI_FD": "5", "PMI_RANK": "0"}, "slurm-pmi2"),
    ({"SLURM_STEP_ID": "0"}, "slurm"),
    ({}, None),
])
def test_detect_launcher(env, launcher):
    got = mpi.detect_launcher(env)
    assert (got[0] if got else None) == launcher


@pytest.mark.parametrize("family,env,level", [
    ("openmpi", {"OMPI_COMM_WORLD_SIZE": "2"}, "ok"),
    ("mpich", {"OMPI_COMM_WORLD_SIZE": "2"}, "refuse"),
    ("openmpi", {"PMI_RANK": "0", "PMI_FD": "6"}, "refuse"),
    ("mpich", {"PMI_RANK": "0", "PMI_FD": "6"}, "ok"),
    ("mpich", {"SLURM_STEP_ID": "0", "PMI_FD": "6", "PMI_RANK": "0"}, "ok"),
    ("mpich", {"SLURM_STEP_ID": "0", "PMIX_RANK": "0"}, "refuse"),
    ("openmpi", {}, "ok"),
])
def test_hybrid_rules(family, env, level):
    c = _info(family, "libmpi.so.40" if family == "openmpi" else "libmpich.so.12", (40,))
    assert mpi.hybrid_check(c, env).level == level


def _fake_sandbox(root: Path, soname: str, real: str) -> Path:
    libdir = root / LIBDIR
    libdir.mkdir(parents=True)
    (libdir / real).write_bytes(b"\x7fELF not really, only the name matters\0")
    (libdir / soname).symlink_to(real)
    for d in ("bin", "etc", "tmp"):
        (root / d).mkdir()
    return root


def test_container_discovery_in_sandbox(tmp_path):
    root = _fake_sandbox(tmp_path / "img", "libmpi.so.12", "libmpi.so.12.3.0")
    found = mpi.discover_container(mpi.list_image(ImageSource("sandbox", str(root), fs_type="dir")))
    assert [(c.family, c.soname, c.abi) for c in found] == [("mpich", "libmpi.so.12", (12, 3, 0))]


@pytest.mark.mpi
def test_mpi_check_refuses_newer_container_mpich_abi(tmp_path, hpccont):
    """Host MPICH 4.0.2 is ABI 12.2; an image built against 12.3 (MPICH 4.1) is refused."""
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/libmpich.so.12"):
        pytest.skip("needs Debian's MPICH")
    root = _fake_sandbox(tmp_path / "img", "libmpi.so.12", "libmpi.so.12.3.0")
    root.chmod(0o755)
    r = hpccont("mpi", "check", "--mode", "bind", root)
    assert r.returncode == 8, r.stderr
    assert "container MPI:  MPICH" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "host minor 2 < container minor 3" in lines[0], r.stderr
