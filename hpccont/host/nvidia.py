"""``--nv``: bind the host's NVIDIA driver (libraries, tools, config files, devices) into a container.

A container must not carry the driver: the user-space libraries must match the kernel module
exactly, so they are found on the host at launch time.  The flow is data first:

    NVML (nvml.Nvml)           driver version, GPUs with index/minor/UUID
    nvliblist.conf             names of binaries, libraries, config files to look for
    ldconfig cache             where the host's dynamic linker finds each library
    environment                which GPUs the job may use (CUDA/NVIDIA_VISIBLE_DEVICES, Slurm)
      -> NvReport              every decision, with the reason (``hpccont nv list`` prints it)
      -> HostAdditions         mounts + environment for the planner

Only ``Nvml.probe()``, the ldconfig run and file-system lookups touch the host; everything else is
plain functions over data, the same on a GPU node and in tests.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import HostError
from ..runtime.plan_types import HostAdditions, Mount
from ..elf import ElfId, file_id
from ..record import factory, record
from .ldcache import LdCacheEntry, host_elf_id, read_ldcache
from .nvml import DriverInfo, Gpu, Nvml, NvmlUnavailable

# A private directory, not a system one: the image's own libraries stay untouched and only
# LD_LIBRARY_PATH makes programs prefer the host driver (the directory Apptainer uses).
LIB_DIR = "/.singularity.d/libs"
BIN_DIR = "/usr/bin"

# Device nodes every CUDA process needs, whichever GPUs it uses.
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
CAPS_DIR = "nvidia-caps"          # MIG capability nodes (nvidia-cap1, nvidia-cap2, ...)

# Searched after the caller's PATH: admin tools such as nvidia-persistenced live in sbin.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

# A driver's own libraries carry its version ("libcuda.so.535.104.05"); vendor-neutral ones
# (libglvnd's libEGL.so.1.1.0, libOpenCL.so.1.0.0) do not and are kept whatever their version.
_DRIVER_VERSIONED = re.compile(r"\.so\.(?P<ver>\d{3,}\.\d+(?:\.\d+)?)$")

# NVIDIA_VISIBLE_DEVICES values that mean "no GPU" (nvidia-container-runtime's vocabulary).
_NO_GPU_WORDS = ("", "none", "void", "nodevfiles")


# --------------------------------------------------------------------------- nvliblist.conf

@record
class LibList:
    binaries: Tuple[str, ...] = ()
    libraries: Tuple[str, ...] = ()
    configs: Tuple[str, ...] = ()     # absolute host paths, bound at the same path


def parse_liblist(text: str) -> LibList:
    """Apptainer's format: one name a line, ``#`` comments; a name containing ``.so`` is a
    library, any other name a binary.  hpccont adds absolute paths: config files (ICD json)."""
    binaries, libraries, configs = [], [], []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("/"):
            configs.append(os.path.normpath(line))
        elif ".so" in line:
            libraries.append(line)
        else:
            binaries.append(line)
    return LibList(tuple(binaries), tuple(libraries), tuple(configs))


# Which vendor's list: (site-config section, file name, message prefix).  --rocm uses the same
# reader with its own list (host/rocm.py).
NVIDIA_LIST = ("nvidia", "nvliblist.conf", "nv")


def liblist_candidates(config: dict, environ, which=NVIDIA_LIST) -> List[str]:
    section, name, _ = which
    configured = config.get(section, {}).get("liblist") or ""
    if configured:
        return [configured]
    from ..config import config_path
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(os.path.dirname(config_path(environ)), name),
            os.path.join(os.path.dirname(package), "site-config", name),
            os.path.join(package, "data", name)]


def load_liblist(config: dict, environ, which=NVIDIA_LIST) -> Tuple[str, LibList]:
    section, name, label = which
    candidates = liblist_candidates(config, environ, which)
    for path in candidates:
        try:
            with open(path) as f:
                return path, parse_liblist(f.read())
        except FileNotFoundError:
            continue
        except OSError as e:
            raise HostError(f"{label}: cannot read {path}: {e.strerror}")
    raise HostError(f"{label}: no {name} (looked at {', '.join(candidates)}; "
                    f"site setting {section}.liblist)")


# --------------------------------------------------------------------------- libraries

@record
class LibChoice:
    name: str         # the name programs ask for (ldconfig key), e.g. libcuda.so.1
    source: str       # the real file on the host
    target: str       # where it appears in the container
    why: str          # the nvliblist entry it matched


@record
class Skipped:
    name: str
    path: str
    reason: str


def liblist_match(name: str, wanted: Sequence[str]) -> Optional[str]:
    """The nvliblist entry ``name`` belongs to: ``libcuda.so`` covers libcuda.so, libcuda.so.1..."""
    for w in wanted:
        if name == w or name.startswith(w + "."):
            return w
    return None


def driver_version_of(path: str) -> Optional[str]:
    m = _DRIVER_VERSIONED.search(os.path.basename(path))
    return m.group("ver") if m else None


def select_libraries(entries: Sequence[LdCacheEntry], wanted: Sequence[str], driver_version: str,
                     host: Optional[ElfId], elf_of: Callable[[str], Optional[ElfId]] = file_id,
                     realpath: Callable[[str], str] = os.path.realpath,
                     ) -> Tuple[List[LibChoice], List[Skipped]]:
    """The driver libraries to bind, in cache order, first usable entry per name.

    Kept: the file exists, its ELF class/byte order/machine are the host's (a multiarch host
    lists i386 copies under the same names), and a driver-versioned file is of the running
    driver's version (a stale copy left by an older driver would fail against the kernel module).
    """
    chosen: List[LibChoice] = []
    skipped: List[Skipped] = []
    taken = set()
    for entry in entries:
        why = liblist_match(entry.name, wanted)
        if why is None:
            continue
        real = realpath(entry.path)
        reason = _unusable(real, driver_version, host, elf_of)
        if reason:
            # Reported even when another copy won: stale files are what admins look for.
            skipped.append(Skipped(entry.name, entry.path, reason))
            continue
        if entry.name in taken:
            continue
        taken.add(entry.name)
        chosen.append(LibChoice(entry.name, real, f"{LIB_DIR}/{entry.name}", why))
    return chosen, skipped


def _unusable(real: str, driver_version: str, host: Optional[ElfId],
              elf_of: Callable[[str], Optional[ElfId]]) -> str:
    ident = elf_of(real)
    if ident is None:
        return "missing or not an ELF file" if not os.path.exists(real) else "not an ELF file"
    if host is not None and ident != host:
        return f"{ident.describe()}, host is {host.describe()}"
    version = driver_version_of(real)
    if version is not None and driver_version and version != driver_version:
        return f"version {version}, driver is {driver_version}"
    return ""


# --------------------------------------------------------------------------- binaries, configs

def search_path(environ) -> List[str]:
    dirs = [d for d in environ.get("PATH", "").split(":") if d.startswith("/")]
    return dirs + [d for d in SYSTEM_PATH if d not in dirs]


def find_binaries(names: Sequence[str], path_dirs: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    found, missing = {}, []
    path = os.pathsep.join(path_dirs)
    for name in names:
        where = shutil.which(name, path=path)
        if where:
            found[name] = os.path.realpath(where)
        else:
            missing.append(name)
    return found, missing


def existing_files(paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    present = [p for p in paths if os.path.isfile(p)]
    return present, [p for p in paths if p not in present]


# --------------------------------------------------------------------------- GPUs and devices

@record
class GpuSelection:
    gpus: List[Gpu]                   # the GPUs the job may use, in the order the job named them
    source: str                       # what decided: "all GPUs", "SLURM_JOB_GPUS=1,2", ...
    constrained: bool = False         # a variable narrowed the set (so the container gets one too)
    passthrough: Optional[str] = None  # MIG device names: handed over unchanged
    notes: List[str] = factory(list)


def _split(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def slurm_gpus(environ) -> Optional[Tuple[str, List[int]]]:
    """Slurm's GPU ids (gres.conf order, which is the /dev/nvidia<N> number): step over job."""
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = environ.get(var)
        if value is not None and value.strip():
            ids = [int(v) for v in _split(value) if v.isdigit()]
            return f"{var}={value}", ids
    return None


def visible_devices_var(environ) -> Optional[Tuple[str, str]]:
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"):
        if var in environ:
            return var, environ[var]
    return None


def pick_visible(base: List[Gpu], value: str) -> Tuple[List[Gpu], Optional[str], List[str]]:
    """Apply a CUDA_VISIBLE_DEVICES-style list to ``base``: ordinals into ``base`` or GPU UUIDs
    (unique prefixes allowed).  Like CUDA, the list ends at the first invalid entry."""
    if value.strip().lower() in _NO_GPU_WORDS:
        return [], None, []
    if value.strip().lower() == "all":
        return list(base), None, []
    items = _split(value)
    if any(i.startswith("MIG-") for i in items):
        return list(base), value, []
    picked: List[Gpu] = []
    for item in items:
        gpu = _lookup(base, item)
        if gpu is None:
            return picked, None, [f"'{item}' names no GPU this job may use; list ends there"]
        if gpu not in picked:
            picked.append(gpu)
    return picked, None, []


def _lookup(base: List[Gpu], item: str) -> Optional[Gpu]:
    if item.isdigit():
        n = int(item)
        return base[n] if n < len(base) else None
    if item.startswith("GPU-"):
        hits = [g for g in base if g.uuid.startswith(item)]
        return hits[0] if len(hits) == 1 else None
    return None


def select_gpus(gpus: Sequence[Gpu], environ) -> GpuSelection:
    """The GPUs a job may use.

    Slurm's ids narrow the node's GPUs first.  CUDA_VISIBLE_DEVICES (else NVIDIA_VISIBLE_DEVICES,
    else GPU_DEVICE_ORDINAL) then picks among them: inside an allocation its ordinals count the
    allocated GPUs (Slurm renumbers when it constrains devices), except that a list equal to
    Slurm's own ids is Slurm exporting global numbers (ConstrainDevices off).
    """
    base = sorted(gpus, key=lambda g: g.index)
    source, constrained, notes = "all GPUs", False, []
    slurm = slurm_gpus(environ)
    if slurm:
        label, ids = slurm
        by_minor = {g.minor: g for g in base}
        base = [by_minor[i] for i in ids if i in by_minor]
        notes += [f"{label}: no GPU with minor number {i}" for i in ids if i not in by_minor]
        source, constrained = label, True
    visible = visible_devices_var(environ)
    if visible is None:
        return GpuSelection(base, source, constrained, None, notes)
    var, value = visible
    if slurm and [int(v) for v in _split(value) if v.isdigit()] == slurm[1] and value.replace(",", "").isdigit():
        return GpuSelection(base, f"{slurm[0]} ({var} gives the same global ids)", True, None, notes)
    picked, passthrough, more = pick_visible(base, value)
    label = f"{var}={value}" if not slurm else f"{slurm[0]}, then {var}={value}"
    return GpuSelection(picked, label, True, passthrough, notes + more)


def is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def device_paths(selection: GpuSelection, dev_root: str = "/dev",
                 is_device: Callable[[str], bool] = is_char_device) -> Tuple[List[str], List[str]]:
    """Host device nodes to bind (present) and those expected but absent.  Paths are host paths
    under ``dev_root``; in the container they appear under /dev."""
    wanted = [os.path.join(dev_root, n) for n in CONTROL_DEVICES]
    caps = os.path.join(dev_root, CAPS_DIR)
    try:
        wanted += [os.path.join(caps, n) for n in sorted(os.listdir(caps))]
    except OSError:
        pass
    gpu_nodes = [os.path.join(dev_root, f"nvidia{g.minor}") for g in selection.gpus]
    present = [p for p in wanted + gpu_nodes if is_device(p)]
    # Optional control nodes (uvm-tools, modeset) are absent on many nodes: not worth a warning.
    missing = [p for p in gpu_nodes + wanted[:1] if p not in present]
    return present, missing


def container_device_path(host_path: str, dev_root: str) -> str:
    return "/dev/" + os.path.relpath(host_path, dev_root)


def inside_environment(selection: GpuSelection, environ, private_dev: bool) -> Dict[str, str]:
    """CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES as the container sees its GPUs.

    With a private /dev the container has only the chosen GPUs' nodes, so CUDA numbers them
    0..n-1.  With the host's /dev it may see every GPU, and only UUIDs still name the right
    ones.  Nothing is set when no variable constrained the choice: all GPUs, as on the host.
    """
    if not selection.constrained:
        return {}
    if selection.passthrough is not None:
        value = selection.passthrough
    elif not selection.gpus:
        value = ""
    elif private_dev:
        value = ",".join(str(i) for i in range(len(selection.gpus)))
    else:
        value = ",".join(g.uuid for g in selection.gpus)
    env = {"CUDA_VISIBLE_DEVICES": value, "NVIDIA_VISIBLE_DEVICES": value or "none"}
    if "GPU_DEVICE_ORDINAL" in environ and (private_dev or not selection.gpus):
        env["GPU_DEVICE_ORDINAL"] = value
    return env


# --------------------------------------------------------------------------- the report

@record
class NvReport:
    """Everything --nv decided on this node and why (``hpccont nv list`` prints it)."""
    driver: Optional[DriverInfo] = None
    unavailable: str = ""             # why there is no GPU support ("" when there is)
    liblist: str = ""
    libraries: List[LibChoice] = factory(list)
    skipped: List[Skipped] = factory(list)
    missing_libraries: List[str] = factory(list)
    binaries: Dict[str, str] = factory(dict)
    missing_binaries: List[str] = factory(list)
    configs: List[str] = factory(list)
    missing_configs: List[str] = factory(list)
    selection: Optional[GpuSelection] = None
    devices: List[str] = factory(list)
    missing_devices: List[str] = factory(list)
    dev_root: str = "/dev"
    env: Dict[str, str] = factory(dict)

    def problems(self) -> List[str]:
        """What --nv-strict refuses: no driver, no libcuda, a chosen GPU without its node."""
        if self.unavailable:
            return [self.unavailable]
        found = []
        if not any(c.why == "libcuda.so" for c in self.libraries):
            found.append("libcuda.so not found in the ldconfig cache")
        found += [f"device {p} missing" for p in self.missing_devices]
        if self.selection:
            found += self.selection.notes
        return found


def discover(config: dict, environ, nvml=None, dev_root: str = "/dev",
             private_dev: bool = False) -> NvReport:
    """Look at the host and decide.  ``nvml``: an object with ``probe() -> DriverInfo``
    (default: the real adapter)."""
    report = NvReport(dev_root=dev_root)
    try:
        report.driver = (nvml or Nvml()).probe()
    except NvmlUnavailable as e:
        report.unavailable = f"no NVIDIA driver ({e})"
        return report
    nv = config.get("nvidia", {})
    report.liblist, wanted = load_liblist(config, environ)
    chosen, skipped = select_libraries(read_ldcache(nv.get("ldconfig") or "/sbin/ldconfig"),
                                       wanted.libraries, report.driver.version, host_elf_id())
    report.libraries, report.skipped = chosen, skipped
    matched = {c.why for c in chosen}
    report.missing_libraries = [w for w in wanted.libraries if w not in matched]
    report.binaries, report.missing_binaries = find_binaries(wanted.binaries, search_path(environ))
    report.configs, report.missing_configs = existing_files(wanted.configs)
    report.selection = select_gpus(report.driver.gpus, environ)
    report.devices, report.missing_devices = device_paths(report.selection, dev_root)
    report.env = inside_environment(report.selection, environ, private_dev)
    return report


def additions_from_report(report: NvReport) -> HostAdditions:
    add = HostAdditions()
    if report.unavailable:
        return add
    for lib in report.libraries:
        add.mounts.append(Mount("bind", lib.target, lib.source, readonly=True,
                                why=f"nv: {lib.why}"))
    for name, src in sorted(report.binaries.items()):
        add.mounts.append(Mount("bind", f"{BIN_DIR}/{name}", src, readonly=True, optional=True,
                                why="nv: binary"))
    for path in report.configs:
        add.mounts.append(Mount("bind", path, path, readonly=True, optional=True,
                                why="nv: config file"))
    for path in report.devices:
        add.mounts.append(Mount("dev", container_device_path(path, report.dev_root), path,
                                optional=True, why="nv: device"))
    if report.libraries:
        add.ld_library_path.append(LIB_DIR)
    add.env.update(report.env)
    return add


def nv_wanted(request, config: dict) -> bool:
    """--nv, --nv-strict, or the site's ``nvidia.always``."""
    return bool(request.nv or request.nv_strict or config.get("nvidia", {}).get("always"))


def nv_additions(request, config: dict, environ, nvml=None, dev_root: str = "/dev") -> HostAdditions:
    """What the planner merges for --nv.

    No driver: one warning and no GPU support (silent when only the site's ``nvidia.always``
    asked, so CPU nodes stay quiet); --nv-strict turns every problem into HostError.
    """
    # The host's /dev shows every GPU node; only a container without it (no /dev, a minimal
    # one, --contain) sees just ours.
    private_dev = (config.get("mounts", {}).get("dev", True) is not True
                   or bool(getattr(request, "contain", False) or getattr(request, "containall", False)))
    report = discover(config, environ, nvml=nvml, dev_root=dev_root, private_dev=private_dev)
    problems = report.problems()
    if request.nv_strict and problems:
        raise HostError(f"--nv-strict: {problems[0]}")
    add = additions_from_report(report)
    if report.unavailable:
        if request.nv:
            add.warnings.append(f"nv: {report.unavailable}; running without GPU support")
        return add
    add.warnings += [f"nv: {p}" for p in problems]
    return add
