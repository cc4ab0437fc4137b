"""What the host contributes to MPI jobs: its MPI, the ABI check, bind mode and hybrid checks.

Two ways to run an MPI program in a container:

hybrid  the container carries its own MPI; the host launcher (mpirun, mpiexec.hydra, srun)
        starts one container per rank and the two sides talk through PMI/PMIx.  That only
        works when the container's MPI speaks the launcher's protocol, so ``hybrid_check``
        refuses pairings known to start N singletons ("rank 0 of 1" N times).
bind    the host's MPI (tuned for the interconnect) and its dependency closure are bound
        into the container at a private path that comes first in the library search path.
        That only works when the container's program is ABI compatible with the host
        library, so ``abi_check`` refuses the rest before anything is launched.

Nothing here launches anything: ``mpi_additions`` returns a HostAdditions (binds, env, library
path) that the planner merges into the launch plan.  Every path lookup goes through ``HostView``
so that discovery can be tested on a synthetic tree of library files.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time

from ..record import factory, record

if TYPE_CHECKING:  # annotations only: typing and dataclasses stay off the launch path
    from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from ..elf import file_dynamic
from ..errors import HostError, ImageError
from ..runtime.plan_types import HostAdditions, ImageSource, Mount

# Where bind mode puts the host's MPI inside the container.  A private path (not /usr/lib)
# so that the container's own files stay visible and nothing the image owns is shadowed.
PRIVATE_DIR = "/.hpccont/mpi"
PRIVATE_LIB = PRIVATE_DIR + "/lib"

FAMILY_NAMES = {"openmpi": "Open MPI", "mpich": "MPICH", "unknown": "unknown MPI"}

# soname -> family.  MPICH's ABI initiative (MPICH, Intel MPI, Cray MPICH, MVAPICH) keeps
# libmpi.so.12; Debian ships the same library as libmpich.so.12.  Open MPI 3.x-5.x keep
# libmpi.so.40.  Order matters: the first soname found for a family is its main library.
MPI_SONAMES: List[Tuple[str, str]] = [
    ("libmpi.so.40", "openmpi"),
    ("libmpi.so.12", "mpich"),
    ("libmpich.so.12", "mpich"),
]

# A library file's name -> (soname, version tuple).  "libmpi.so.40.30.4" -> ("libmpi.so.40", (40, 30, 4))
_LIBNAME = re.compile(r"^(lib[\w+.-]*?\.so\.(\d+))((?:\.\d+)*)$")

# Open MPI's libtool "age" of libmpi.so.40 tells the release series when no string says it.
OMPI_SERIES_BY_MINOR = {0: "3.0", 10: "3.1", 20: "4.0", 30: "4.1", 40: "5.0"}

# The C library and the compiler run-times stay the container's own: the container's
# programs were linked against them, and glibc in particular must match its own ld.so.
NEVER_BIND = {
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "ld64.so.2", "ld-linux.so.2",
    "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2",
    "libutil.so.1", "libnsl.so.1", "libanl.so.1", "libmvec.so.1", "libBrokenLocale.so.1",
    "libcrypt.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libgfortran.so.5", "libgfortran.so.4",
    "libquadmath.so.0", "libgomp.so.1", "libatomic.so.1",
}

# Plug-in directories loaded with dlopen (so no DT_NEEDED points at them).  Columns:
# owning soname, globs relative to the owner's directory, a file that must be in the directory,
# where it goes under PRIVATE_DIR, and the variable that tells the owner where to look (None:
# the owner finds it next to its own file, as UCX does with the "ucx" directory).
PLUGIN_DIRS: List[Tuple[str, Tuple[str, ...], str, str, Optional[str]]] = [
    ("libmpi.so.40", ("openmpi/lib/openmpi*", "openmpi"), "mca_*.so", "openmpi",
     "OMPI_MCA_mca_base_component_path"),
    ("libpmix.so.2", ("pmix2/lib/pmix", "pmix*/lib/pmix", "pmix"), "*mca_*.so", "pmix",
     "PMIX_MCA_mca_base_component_path"),
    ("libucs.so.0", ("ucx",), "libuct_*.so*", "lib/ucx", None),
    ("libfabric.so.1", ("libfabric",), "lib*-fi.so", "libfabric", "FI_PROVIDER_PATH"),
]

# libibverbs finds its provider plug-ins through the .driver files in /etc/libibverbs.d and a
# directory compiled into the library, so both are bound at their host paths.
VERBS_CONFIG = "/etc/libibverbs.d"
VERBS_PROVIDER_GLOBS = ("libibverbs",)

DEFAULT_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                    "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
                    "/usr/local/lib", "/usr/local/lib64")

# ``ldconfig -p`` lists every ABI's libraries; keep this machine's.
LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit", "riscv64": "64bit"}

# Launchers, recognised by the variables they give each rank.  First match wins.
LAUNCHERS: List[Tuple[str, Tuple[str, ...], str]] = [
    ("openmpi", ("OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri", "OMPI_MCA_ess_base_jobid"),
     "Open MPI mpirun (PMIx)"),
    ("slurm-pmix", ("SLURM_STEP_ID+PMIX_RANK",), "srun --mpi=pmix"),
    ("slurm-pmi2", ("SLURM_STEP_ID+PMI_FD", "SLURM_STEP_ID+PMI_RANK"), "srun --mpi=pmi2"),
    ("hydra", ("PMI_RANK", "PMI_FD", "HYDI_CONTROL_FD", "MPI_LOCALNRANKS"),
     "MPICH mpiexec.hydra (PMI)"),
    ("pmix", ("PMIX_RANK",), "a PMIx launcher"),
    ("slurm", ("SLURM_STEP_ID",), "srun without an MPI plug-in"),
]

# (container family, launcher) -> (verdict, why).  Seen on Debian 12: Open MPI 4.1 starts only
# under PMIx (its mpirun, srun --mpi=pmix); MPICH 4.0 only under PMI-1/2 (hydra, srun
# --mpi=pmi2).  Every refused pairing starts N unconnected singletons instead of one job.
HYBRID_RULES: Dict[Tuple[str, str], Tuple[str, str]] = {
    ("openmpi", "openmpi"): ("ok", "Open MPI in the container, Open MPI's mpirun on the host"),
    ("openmpi", "slurm-pmix"): ("ok", "Open MPI talks PMIx to srun --mpi=pmix"),
    ("openmpi", "pmix"): ("ok", "Open MPI talks PMIx to the launcher"),
    ("openmpi", "hydra"): ("refuse", "Open MPI in the container cannot talk to MPICH's hydra "
                           "launcher (PMI-1); use Open MPI's mpirun or srun --mpi=pmix"),
    ("openmpi", "slurm-pmi2"): ("refuse", "Open MPI in the container needs PMIx; use srun "
                                "--mpi=pmix instead of --mpi=pmi2"),
    ("openmpi", "slurm"): ("refuse", "srun started the ranks without a PMI plug-in; use srun "
                           "--mpi=pmix for Open MPI"),
    ("mpich", "hydra"): ("ok", "MPICH talks PMI to mpiexec.hydra"),
    ("mpich", "slurm-pmi2"): ("ok", "MPICH talks PMI-2 to srun --mpi=pmi2"),
    ("mpich", "openmpi"): ("refuse", "MPICH in the container cannot talk to Open MPI's mpirun "
                           "(PMIx); use mpiexec.hydra (mpirun.mpich) or srun --mpi=pmi2"),
    ("mpich", "slurm-pmix"): ("refuse", "MPICH in the container was not built with PMIx; use "
                              "srun --mpi=pmi2"),
    ("mpich", "pmix"): ("warn", "MPICH needs PMIx support compiled in to use this launcher"),
    ("mpich", "slurm"): ("refuse", "srun started the ranks without a PMI plug-in; use srun "
                         "--mpi=pmi2 for MPICH"),
}


@record
class MpiInfo:
    """One MPI installation, on the host or in an image."""
    family: str                     # "openmpi" | "mpich" | "unknown"
    soname: str = ""                # "libmpi.so.40"
    library: str = ""               # path of the real file (host path, or path inside the image)
    abi: Tuple[int, ...] = ()       # from the real file name: libmpi.so.40.30.4 -> (40, 30, 4)
    version: str = ""               # "4.1.4" when the library says so
    source: str = ""                # how it was found
    pmi: List[str] = factory(list)    # host only: PMI libraries present

    @property
    def name(self) -> str:
        return FAMILY_NAMES.get(self.family, self.family)

    def describe(self) -> str:
        ver = self.version or "version unknown"
        abi = ".".join(map(str, self.abi))
        return f"{self.name} {ver} ({self.soname}{' ABI ' + abi if abi else ''}, {self.library})"


@record
class Verdict:
    """A decision with the reason the user sees."""
    level: str          # "ok" | "warn" | "refuse" | "unknown"
    reason: str


# ---------------------------------------------------------------------------------------------
# The host, seen through a root directory so that tests can point it at a synthetic tree.

@record
class HostView:
    root: str = "/"
    lib_dirs: Tuple[str, ...] = DEFAULT_LIB_DIRS
    use_commands: bool = True       # run ldconfig -p / mpicc -show (only for the real host)
    _ldcache: Optional[Dict[str, str]] = None

    def path(self, p: str) -> str:
        """Host path -> where to read it (under root)."""
        return os.path.join(self.root, p.lstrip("/")) if self.root != "/" else p

    def unroot(self, p: str) -> str:
        if self.root == "/":
            return p
        return "/" + os.path.relpath(p, self.root) if p.startswith(self.root) else p

    def ldcache(self) -> Dict[str, str]:
        """soname -> path from ``ldconfig -p`` (empty for synthetic trees)."""
        if self._ldcache is None:
            self._ldcache = {}
            if self.use_commands and self.root == "/":
                out = _run(["ldconfig", "-p"]) or _run(["/sbin/ldconfig", "-p"]) or ""
                for line in out.splitlines():
                    m = re.match(r"\s*(\S+) \((.*?)\) => (\S+)", line)
                    flag = LDCONFIG_ARCH.get(os.uname().machine, "")
                    if m and flag in m.group(2):
                        self._ldcache.setdefault(m.group(1), m.group(3))
        return self._ldcache

    def find_lib(self, soname: str, first_dirs: Iterable[str] = ()) -> Optional[str]:
        """Host path of ``soname``: the given directories, the ld.so cache, the standard dirs."""
        for d in first_dirs:
            if os.path.exists(self.path(os.path.join(d, soname))):
                return os.path.join(d, soname)
        hit = self.ldcache().get(soname)
        if hit:
            return hit
        for d in self.lib_dirs:
            if os.path.exists(self.path(os.path.join(d, soname))):
                return os.path.join(d, soname)
        return None

    def realpath(self, p: str) -> str:
        if self.root == "/":
            return os.path.realpath(p)
        return self.unroot(os.path.realpath(self.path(p)))


def _run(argv: List[str], timeout: float = 10) -> Optional[str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def split_libname(name: str) -> Tuple[str, Tuple[int, ...]]:
    """``libmpi.so.40.30.4`` -> (``libmpi.so.40``, (40, 30, 4)); unversioned -> (name, ())."""
    m = _LIBNAME.match(name)
    if not m:
        return name, ()
    nums = [int(m.group(2))] + [int(x) for x in m.group(3).split(".") if x]
    return m.group(1), tuple(nums)


_VERSION_STRING = re.compile(rb"\x00(\d{1,2}\.\d{1,2}(?:\.\d{1,3})?(?:[ab]\d+|rc\d+)?)\x00")


def version_from_library(data: bytes, family: str, abi: Tuple[int, ...]) -> str:
    """The release an MPI library says it is.

    Open MPI and MPICH both keep their release ("4.1.4", "4.0.2") as a plain string in the
    library's read-only data; it is the first dotted version there.  Failing that, Open MPI's
    libtool age tells the series.
    """
    markers = {"openmpi": b"Open MPI", "mpich": b"MPICH"}
    if markers.get(family, b"\0") in data:
        m = _VERSION_STRING.search(data)
        if m:
            return m.group(1).decode()
    if family == "openmpi" and len(abi) >= 2 and abi[1] in OMPI_SERIES_BY_MINOR:
        return OMPI_SERIES_BY_MINOR[abi[1]] + ".x"
    return ""


def family_of(soname: str) -> Optional[str]:
    return next((fam for s, fam in MPI_SONAMES if s == soname), None)


# ---------------------------------------------------------------------------------------------
# Host MPI discovery

def _candidates_from_config(config: dict, view: HostView) -> List[Tuple[str, str]]:
    """(host library path, source) for each ``mpi.installations`` entry (prefix or lib dir)."""
    found = []
    for entry in (config.get("mpi", {}) or {}).get("installations", []) or []:
        prefix = entry.get("path", "") if isinstance(entry, dict) else entry
        if not prefix:
            continue
        if os.path.isfile(view.path(prefix)) and family_of(os.path.basename(prefix)):
            found.append((prefix, "site config mpi.installations"))   # the library itself
            continue
        dirs = [prefix, os.path.join(prefix, "lib"), os.path.join(prefix, "lib64")]
        for soname, _fam in MPI_SONAMES:
            for d in dirs:
                if os.path.exists(view.path(os.path.join(d, soname))):
                    found.append((os.path.join(d, soname), f"site config mpi.installations: {prefix}"))
                    break
    return found


def _candidates_from_mpicc(view: HostView, environ: Mapping[str, str]) -> List[Tuple[str, str]]:
    """The library ``mpicc -show`` links (-L dirs and -lmpi/-lmpich)."""
    if not (view.use_commands and view.root == "/"):
        return []
    found = []
    for cc in (environ.get("MPICC") or "mpicc", "mpicc.mpich", "mpicc.openmpi"):
        out = _run([cc, "-show"])
        if not out:
            continue
        words = out.split()
        ldirs = [w[2:] for w in words if w.startswith("-L")]
        for lib in (w[2:] for w in words if w.startswith("-l")):
            if lib not in ("mpi", "mpich"):
                continue
            for soname, _fam in MPI_SONAMES:
                if soname.startswith(f"lib{lib}.so."):
                    path = view.find_lib(soname, ldirs)
                    if path:
                        found.append((path, f"{cc} -show"))
    return found


def _candidates_from_ldconfig(view: HostView) -> List[Tuple[str, str]]:
    found = []
    for soname, _fam in MPI_SONAMES:
        path = view.find_lib(soname)
        if path:
            found.append((path, "ldconfig" if view.root == "/" else f"library dirs under {view.root}"))
    return found


def host_pmi(view: HostView) -> List[str]:
    """PMI flavours the host offers, for display (``mpi check``)."""
    table = [("libpmix.so.2", "PMIx"), ("libpmi2.so.0", "PMI-2 (Slurm)"), ("libpmi.so.0", "PMI-1 (Slurm)")]
    return [name for soname, name in table if view.find_lib(soname)]


def describe_library(view: HostView, path: str, source: str) -> MpiInfo:
    real = view.realpath(path)
    soname = os.path.basename(path)
    _s, abi = split_libname(os.path.basename(real))
    if not abi:
        _s, abi = split_libname(soname)
    fam = family_of(soname) or "unknown"
    try:
        with open(view.path(real), "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    return MpiInfo(family=fam, soname=soname, library=real, abi=abi,
                   version=version_from_library(data, fam, abi), source=source)


def discover_host(config: dict, environ: Mapping[str, str] = os.environ,
                  view: Optional[HostView] = None) -> List[MpiInfo]:
    """Every host MPI found, best first: site config, then ``mpicc -show``, then ldconfig.

    When the site config names installations, only those count: an admin who lists them
    means "these, not whatever else happens to be installed".
    """
    view = view or HostView()
    cands = _candidates_from_config(config, view)
    if not cands:
        cands = _candidates_from_mpicc(view, environ) + _candidates_from_ldconfig(view)
    seen, out = set(), []
    pmi = host_pmi(view)
    for path, source in cands:
        info = describe_library(view, path, source)
        if info.library in seen:
            continue
        seen.add(info.library)
        info.pmi = pmi
        out.append(info)
    return out


# ---------------------------------------------------------------------------------------------
# The container's MPI, read from the image without mounting it

@record
class ImageFiles:
    """Listing of an image: path -> symlink target ("" for files), and a way to read files."""
    source: ImageSource
    entries: Dict[str, str]

    def resolve(self, path: str, depth: int = 0) -> str:
        target = self.entries.get(path, "")
        if not target or depth > 20:
            return path
        nxt = target if target.startswith("/") else os.path.normpath(
            os.path.join(os.path.dirname(path), target))
        return self.resolve(nxt, depth + 1)

    def read(self, path: str, limit: int = 64 << 20) -> bytes:
        if self.source.kind == "sandbox":
            try:
                with open(os.path.join(self.source.path, path.lstrip("/")), "rb") as f:
                    return f.read(limit)
            except OSError:
                return b""
        from ..image.squashfs import cat_file
        try:
            data = cat_file(self.source.path, path, self.source.offset, timeout=60)
        except ImageError:
            return b""
        return (data or b"")[:limit]


_LISTED_DIRS = ("lib", "lib64", "usr", "opt")


def list_image(source: ImageSource) -> ImageFiles:
    """The image's library-looking files (no mount: sandbox walk or ``unsquashfs -lls``)."""
    entries: Dict[str, str] = {}
    if source.kind == "sandbox" or source.fs_type == "dir":
        root = source.path
        for top in _LISTED_DIRS:
            for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
                for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    if ".so" not in n:
                        continue
                    full = os.path.join(dirpath, n)
                    rel = "/" + os.path.relpath(full, root)
                    entries[rel] = os.readlink(full) if os.path.islink(full) else ""
        return ImageFiles(source, entries)
    if source.fs_type != "squashfs":
        raise ImageError(f"cannot inspect the MPI of a {source.fs_type} image ({source.path})")
    from ..image.squashfs import long_listing
    for line in long_listing(source.path, source.offset):
        parts = line.split(None, 5)
        if len(parts) < 6 or ".so" not in parts[5]:
            continue
        name, _arrow, target = parts[5].partition(" -> ")
        entries[name] = target if line.startswith("l") else ""
    return ImageFiles(source, entries)


def discover_container(files: ImageFiles, versions: bool = True) -> List[MpiInfo]:
    """The MPI libraries in an image, best first (Open MPI, then MPICH ABI).

    ``versions``: also read each library for its release string (tens of MB for MPICH; the
    ABI decision needs only the file names).
    """
    out = []
    for soname, fam in MPI_SONAMES:
        paths = sorted(p for p in files.entries if os.path.basename(p) == soname)
        if not paths:
            continue
        real = files.resolve(paths[0])
        _s, abi = split_libname(os.path.basename(real))
        if any(i.family == fam for i in out):
            continue
        data = files.read(real) if versions else b""
        out.append(MpiInfo(family=fam, soname=soname, library=paths[0], abi=abi or split_libname(soname)[1],
                           version=version_from_library(data, fam, abi), source="image"))
    return out


# ---------------------------------------------------------------------------------------------
# Decisions

def _named(info: MpiInfo) -> str:
    return " ".join(x for x in (info.name, info.version, f"({info.soname})") if x)


def abi_check(host: MpiInfo, container: MpiInfo) -> Verdict:
    """Can the container's program run on the host's library?

    MPICH ABI: the soname major must be equal and the host's libtool minor at least the
    container's (newer interfaces are added with a higher minor).  Open MPI: the libmpi.so.40
    family is one ABI from 3.0 to 5.0, but a host older than the container may lack symbols.
    """
    if host.family != container.family:
        return Verdict("refuse", f"host MPI is {_named(host)} but the container's is "
                       f"{_named(container)}: different MPI families are not ABI compatible")
    h, c = host.abi, container.abi
    if not h or not c:
        return Verdict("warn", f"cannot read the ABI version of {host.soname if not h else container.soname}; "
                       "assuming compatible")
    if h[0] != c[0]:
        return Verdict("refuse", f"host {host.soname} has ABI major {h[0]} but the container's "
                       f"{container.soname} has {c[0]}")
    hmin = h[1] if len(h) > 1 else 0
    cmin = c[1] if len(c) > 1 else 0
    if hmin < cmin:
        return Verdict("refuse", f"host {host.name} ABI {'.'.join(map(str, h))} is older than the "
                       f"container's {'.'.join(map(str, c))} (host minor {hmin} < container minor "
                       f"{cmin}): the program may use interfaces the host library lacks")
    return Verdict("ok", f"{host.name} ABI {'.'.join(map(str, h))} on the host serves the "
                   f"container's {'.'.join(map(str, c))}")


def detect_launcher(environ: Mapping[str, str]) -> Optional[Tuple[str, str]]:
    """(launcher id, description) from the variables a launcher gives each rank; None outside one."""
    for ident, signs, desc in LAUNCHERS:
        for sign in signs:
            if all(v in environ for v in sign.split("+")):
                return ident, desc
    return None


def hybrid_check(container: Optional[MpiInfo], environ: Mapping[str, str]) -> Verdict:
    """Does the container's MPI speak the protocol of the launcher that started this rank?"""
    launcher = detect_launcher(environ)
    if launcher is None:
        return Verdict("ok", "not started by an MPI launcher (singleton)")
    if container is None:
        return Verdict("unknown", f"started by {launcher[1]}; no MPI library found in the image")
    level, why = HYBRID_RULES.get((container.family, launcher[0]),
                                  ("unknown", f"no rule for {container.name} under {launcher[1]}"))
    return Verdict(level, why)


def choose_host(hosts: List[MpiInfo], container: MpiInfo) -> MpiInfo:
    """The host installation to bind for this container: the first of the same family."""
    if not hosts:
        raise HostError("bind mode: no host MPI found (set mpi.installations in the site config, "
                        "or put mpicc on PATH)")
    return next((h for h in hosts if h.family == container.family), hosts[0])


# ---------------------------------------------------------------------------------------------
# Bind mode: what to bind

@record
class BindSet:
    """Host files and directories bind mode maps into the container."""
    libs: Dict[str, str] = factory(dict)          # soname -> host path (real file)
    plugin_dirs: List[Tuple[str, str, Optional[str]]] = factory(list)  # host dir, sub, env
    host_path_dirs: List[str] = factory(list)     # bound at the same path (verbs)
    devices: List[str] = factory(list)
    missing: List[str] = factory(list)            # unresolved DT_NEEDED names


# The MPI's own libraries, found next to its main one (Fortran/C++ bindings, Open MPI's
# run-time layers).  MPICH and Open MPI often share a directory, so each family names its own.
FAMILY_LIBS = {
    "openmpi": re.compile(r"^lib(mpi(?!ch)[\w+-]*|open-[\w-]+|oshmem|ompitrace|mca_common_\w+)\.so\.(?!12$)\d+$"),
    "mpich": re.compile(r"^lib(mpich[\w-]*|mpi|mpicxx|mpifort)\.so\.12$"),
}


def _mpi_family_libs(view: HostView, host: MpiInfo) -> List[str]:
    libdir = os.path.dirname(host.library)
    pattern = FAMILY_LIBS.get(host.family)
    try:
        names = sorted(os.listdir(view.path(libdir)))
    except OSError:
        names = []
    return [host.library] + [os.path.join(libdir, n) for n in names
                             if pattern and pattern.match(n) and "java" not in n]


def _plugin_dirs_for(view: HostView, soname: str, libpath: str):
    """Plug-in directories of one library, looked for next to its link and its real file."""
    bases = dict.fromkeys([os.path.dirname(libpath), os.path.dirname(view.realpath(libpath))])
    for owner, globs, marker, sub, env in PLUGIN_DIRS:
        if owner != soname:
            continue
        hits = [d for base in bases for g in globs
                for d in sorted(glob.glob(view.path(os.path.join(base, g))))
                if os.path.isdir(d) and glob.glob(os.path.join(d, marker))]
        if hits:
            yield view.realpath(view.unroot(hits[0])), sub, env


def _verbs_dirs(view: HostView, libpath: str) -> List[str]:
    libdir = os.path.dirname(libpath)
    dirs = [view.realpath(view.unroot(d)) for g in VERBS_PROVIDER_GLOBS
            for d in glob.glob(view.path(os.path.join(libdir, g))) if os.path.isdir(d)]
    if os.path.isdir(view.path(VERBS_CONFIG)):
        dirs.insert(0, VERBS_CONFIG)
    return dirs


def dependency_closure(view: HostView, host: MpiInfo, extra_libs: Iterable[str] = ()) -> BindSet:
    """The host MPI, everything it needs (DT_NEEDED, transitively), and the plug-in directories
    those libraries load at run time (with the plug-ins' own dependencies)."""
    out = BindSet()
    todo: List[str] = list(_mpi_family_libs(view, host))
    for pattern in extra_libs:
        todo += [view.unroot(p) for p in sorted(glob.glob(view.path(pattern)))]
    seen_files = set()
    seen_dirs = set()
    while todo:
        path = todo.pop(0)
        real = view.realpath(path)
        if real in seen_files:
            continue
        seen_files.add(real)
        dyn = file_dynamic(view.path(real))
        name = os.path.basename(path)
        soname = (dyn.soname if dyn and dyn.soname else split_libname(name)[0])
        is_plugin = any(real.startswith(d + "/") for d, _s, _e in out.plugin_dirs) or \
            any(real.startswith(d + "/") for d in out.host_path_dirs)
        if not is_plugin:
            if soname in NEVER_BIND:
                continue
            out.libs.setdefault(soname, real)
            for d, sub, env in _plugin_dirs_for(view, soname, path):
                if d not in seen_dirs:
                    seen_dirs.add(d)
                    out.plugin_dirs.append((d, sub, env))
                    todo += [os.path.join(d, n) for n in sorted(os.listdir(view.path(d)))
                             if ".so" in n]
            if soname == "libibverbs.so.1":
                for d in _verbs_dirs(view, path):
                    if d not in out.host_path_dirs:
                        out.host_path_dirs.append(d)
                        if d != VERBS_CONFIG:
                            todo += [os.path.join(d, n) for n in sorted(os.listdir(view.path(d)))
                                     if ".so" in n]
        if dyn is None:
            continue
        origin = os.path.dirname(path)
        first = [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in dyn.runpath]
        first.append(os.path.dirname(real))
        for need in dyn.needed:
            if need in NEVER_BIND or need in out.libs:
                continue
            found = view.find_lib(need, first)
            if found:
                todo.append(found)
            elif need not in out.missing:
                out.missing.append(need)
    return out


def devices(view: HostView, config: dict) -> List[str]:
    """Interconnect device nodes present on this host (``/dev/infiniband/*`` by default)."""
    found = []
    for entry in (config.get("mpi", {}) or {}).get("devices", ["/dev/infiniband"]) or []:
        p = view.path(entry)
        if os.path.isdir(p):
            found += [os.path.join(entry, n) for n in sorted(os.listdir(p))]
        elif os.path.exists(p):
            found.append(entry)
    return found


def bind_additions(binds: BindSet, host: MpiInfo) -> HostAdditions:
    """BindSet -> the mounts, variables and library path the planner merges."""
    add = HostAdditions()
    why = f"mpi bind: {host.name} {host.version}".rstrip()
    add.mounts.append(Mount("tmpfs", PRIVATE_DIR, why="mpi bind: private directory"))
    for soname, src in sorted(binds.libs.items()):
        add.mounts.append(Mount("bind", f"{PRIVATE_LIB}/{soname}", source=src, readonly=True, why=why))
    for src, sub, env in binds.plugin_dirs:
        target = f"{PRIVATE_DIR}/{sub}"
        add.mounts.append(Mount("bind", target, source=src, readonly=True, why=f"{why} plug-ins"))
        if env:
            add.env[env] = target
    for d in binds.host_path_dirs:
        add.mounts.append(Mount("bind", d, source=d, readonly=True, optional=True,
                                why="mpi bind: verbs providers"))
    for dev in binds.devices:
        add.mounts.append(Mount("dev", dev, source=dev, why="mpi bind: interconnect device"))
    add.ld_library_path.append(PRIVATE_LIB)
    add.env["HPCCONT_MPI_MODE"] = "bind"
    return add


# ---------------------------------------------------------------------------------------------
# Entry points

@record
class MpiReport:
    """Everything ``mpi check`` prints and ``mpi_additions`` decides from."""
    hosts: List[MpiInfo]
    containers: List[MpiInfo]
    launcher: Optional[Tuple[str, str]]
    mode: str
    verdict: Verdict
    host: Optional[MpiInfo] = None


# Discovery runs commands (mpicc -show, ldconfig -p, unsquashfs) and reads libraries: far too
# slow for every rank of every job.  Its results are kept in the per-user cache, stamped with
# what they depend on: the ldconfig cache, PATH and the site's list for the host, the image
# file for the container.  Synthetic host trees (tests) and sandbox directories are not cached.

def _info_from(d: dict) -> MpiInfo:
    d = dict(d)
    d["abi"] = tuple(d.get("abi") or ())
    return MpiInfo(**d)


def _cached_host(config: dict, environ: Mapping[str, str], view: HostView) -> List[MpiInfo]:
    if view.root != "/" or not view.use_commands:
        return discover_host(config, environ, view)
    from .. import cache
    stamp = [cache.file_stamp("/etc/ld.so.cache"), environ.get("PATH", ""),
             (config.get("mpi", {}) or {}).get("installations", [])]
    found = cache.read("mpi-host", "host", stamp)
    if found is not None:
        return [_info_from(d) for d in found]
    hosts = discover_host(config, environ, view)
    cache.write("mpi-host", "host", stamp, [h.to_dict() for h in hosts])
    return hosts


def _cached_container(image: ImageSource, versions: bool) -> List[MpiInfo]:
    if image.kind == "sandbox":
        return discover_container(list_image(image), versions)
    from .. import cache
    stamp = [cache.file_stamp(image.path), image.offset, versions]
    found = cache.read("mpi-image", image.path, stamp)
    if found is not None:
        return [_info_from(d) for d in found]
    containers = discover_container(list_image(image), versions)
    cache.write("mpi-image", image.path, stamp, [c.to_dict() for c in containers])
    return containers


def inspect(image: ImageSource, config: dict, environ: Mapping[str, str], mode: Optional[str] = None,
            view: Optional[HostView] = None, versions: bool = True) -> MpiReport:
    view = view or HostView()
    hosts = _cached_host(config, environ, view)
    containers = _cached_container(image, versions)
    mode = mode or (config.get("mpi", {}) or {}).get("default_mode", "hybrid")
    launcher = detect_launcher(environ)
    container = containers[0] if containers else None
    if mode == "bind":
        if container is None:
            verdict = Verdict("refuse", "bind mode: the image has no MPI library (libmpi.so.40, "
                              "libmpi.so.12 or libmpich.so.12) to replace")
            return MpiReport(hosts, containers, launcher, mode, verdict)
        if not hosts:
            return MpiReport(hosts, containers, launcher, mode, Verdict(
                "refuse", "bind mode: no host MPI found (set mpi.installations in the site config, "
                "or put mpicc on PATH)"))
        host = choose_host(hosts, container)
        verdict = abi_check(host, container)
        if verdict.level != "refuse" and launcher:
            # The bound host library, not the image's, talks to the launcher.
            speaks = hybrid_check(host, environ)
            if speaks.level == "refuse":
                verdict = Verdict("refuse", speaks.reason.replace("in the container", "(host, bound)"))
        return MpiReport(hosts, containers, launcher, mode, verdict, host)
    return MpiReport(hosts, containers, launcher, mode, hybrid_check(container, environ))


def mpi_additions(request, config: dict, environ: Mapping[str, str], image: ImageSource,
                  view: Optional[HostView] = None) -> HostAdditions:
    """What ``--mpi hybrid|bind`` adds to the plan; HostError when the pairing cannot work.

    hybrid: nothing is bound; a known-bad container/launcher pairing is refused, a doubtful
    one becomes a warning.  bind: the host MPI's closure at PRIVATE_DIR, first on the library
    path, after the ABI check.
    """
    view = view or HostView()
    mode = getattr(request, "mpi", None) or (config.get("mpi", {}) or {}).get("default_mode", "hybrid")
    report = inspect(image, config, environ, mode, view, versions=False)
    if report.verdict.level == "refuse":
        # Worth the extra read: the message names both sides' releases.
        report = inspect(image, config, environ, mode, view)
        raise HostError(f"--mpi {mode}: {report.verdict.reason}")
    if mode != "bind":
        add = HostAdditions()
        if report.verdict.level in ("warn", "unknown") and report.launcher:
            add.warnings.append(f"mpi hybrid: {report.verdict.reason}")
        add.env["HPCCONT_MPI_MODE"] = "hybrid"
        return add
    mpi_cfg = config.get("mpi", {}) or {}
    binds = dependency_closure(view, report.host, mpi_cfg.get("extra_libs", []) or [])
    binds.devices = devices(view, config)
    add = bind_additions(binds, report.host)
    if report.verdict.level == "warn":
        add.warnings.append(f"mpi bind: {report.verdict.reason}")
    return add
