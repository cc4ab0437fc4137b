"""``--rocm``: bind the host's AMD ROCm stack (libraries, tools, devices) into a container.

As with ``--nv`` the user-space stack must match the host's kernel driver (amdgpu, kfd), so it
comes from the host at launch time, the way Apptainer's ``--rocm`` does it:

    rocmliblist.conf           names of binaries and libraries to look for (Apptainer's format)
    ldconfig cache             where the host's dynamic linker finds each library
    PATH                       where the tools (rocminfo, rocm-smi) are
    /dev/kfd, /dev/dri/...     the compute device and every GPU's DRM nodes
      -> RocmReport            every decision, with the reason
      -> HostAdditions         mounts + LD_LIBRARY_PATH for the planner

There is no driver library to ask (NVML's counterpart is the kernel's sysfs), and ROCm libraries
carry the ROCm release, not a driver version, in their file names: every copy of the host's
architecture found in the cache is usable.  Apptainer binds every GPU's nodes and leaves the
choice of GPUs to ROCR_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES, which pass into the container
unchanged; so does this.  Only the ldconfig run and file-system lookups touch the host:
everything else is plain functions over data, the same on an AMD node and in tests.
"""
from __future__ import annotations

import os
import stat
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Tuple

from ..record import factory, record
from ..runtime.plan_types import HostAdditions, Mount
from .ldcache import host_elf_id, read_ldcache
from . import nvidia
from .nvidia import (BIN_DIR, LIB_DIR, LibChoice, LibList, Skipped, find_binaries,
                     search_path, select_libraries)

# The compute device every HIP/HSA process opens, whichever GPUs it uses.
KFD = "kfd"
# Each GPU's DRM nodes (Apptainer binds both kinds: the primary cardN and the render node).
DRI_DIR = "dri"
DRI_PREFIXES = ("card", "renderD")
# Without one of these no HIP or HSA program starts (the rest of the list is optional).
RUNTIMES = ("libamdhip64.so", "libhsa-runtime64.so")


# --------------------------------------------------------------------------- rocmliblist.conf

ROCM_LIST = ("rocm", "rocmliblist.conf", "rocm")


def load_liblist(config: dict, environ) -> Tuple[str, LibList]:
    return nvidia.load_liblist(config, environ, ROCM_LIST)


# --------------------------------------------------------------------------- devices

def is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def device_paths(dev_root: str = "/dev",
                 is_device: Callable[[str], bool] = is_char_device) -> Tuple[List[str], List[str]]:
    """Host device nodes to bind (present, in order: kfd, then dri nodes sorted) and those
    expected but absent (kfd: without it no HIP program starts; no dri node at all)."""
    kfd = os.path.join(dev_root, KFD)
    dri = os.path.join(dev_root, DRI_DIR)
    try:
        names = sorted(n for n in os.listdir(dri) if n.startswith(DRI_PREFIXES))
    except OSError:
        names = []
    nodes = [os.path.join(dri, n) for n in names]
    present = [p for p in [kfd] + nodes if is_device(p)]
    missing = [] if kfd in present else [kfd]
    if not any(p in present for p in nodes):
        missing.append(f"{dri}/card* and renderD*")
    return present, missing


def container_device_path(host_path: str, dev_root: str) -> str:
    return "/dev/" + os.path.relpath(host_path, dev_root)


# --------------------------------------------------------------------------- the report

@record
class RocmReport:
    """Everything --rocm decided on this node and why."""
    liblist: str = ""
    libraries: List[LibChoice] = factory(list)
    skipped: List[Skipped] = factory(list)
    missing_libraries: List[str] = factory(list)
    binaries: Dict[str, str] = factory(dict)
    missing_binaries: List[str] = factory(list)
    devices: List[str] = factory(list)
    missing_devices: List[str] = factory(list)
    dev_root: str = "/dev"


def ldconfig_setting(config: dict) -> str:
    """``rocm.ldconfig``, else the one ``nvidia.ldconfig`` names (one cache per host)."""
    return (config.get("rocm", {}).get("ldconfig") or config.get("nvidia", {}).get("ldconfig")
            or "/sbin/ldconfig")


def discover(config: dict, environ, dev_root: str = "/dev") -> RocmReport:
    report = RocmReport(dev_root=dev_root)
    report.liblist, wanted = load_liblist(config, environ)
    # No driver version to hold the files to ("" skips that check): ROCm names carry releases.
    report.libraries, report.skipped = select_libraries(
        read_ldcache(ldconfig_setting(config)), wanted.libraries, "", host_elf_id())
    matched = {c.why for c in report.libraries}
    report.missing_libraries = [w for w in wanted.libraries if w not in matched]
    report.binaries, report.missing_binaries = find_binaries(wanted.binaries, search_path(environ))
    report.devices, report.missing_devices = device_paths(dev_root)
    return report


def has_runtime(report: RocmReport) -> bool:
    return any(c.why in RUNTIMES for c in report.libraries)


def additions_from_report(report: RocmReport) -> HostAdditions:
    """Without a HIP/HSA runtime the generic libraries of the list (libdrm, libelf, libnuma)
    are not bound either: on a node without ROCm they would only shadow the image's own."""
    add = HostAdditions()
    libraries = report.libraries if has_runtime(report) else []
    for lib in libraries:
        add.mounts.append(Mount("bind", lib.target, lib.source, readonly=True,
                                why=f"rocm: {lib.why}"))
    for name, src in sorted(report.binaries.items()):
        add.mounts.append(Mount("bind", f"{BIN_DIR}/{name}", src, readonly=True, optional=True,
                                why="rocm: binary"))
    for path in report.devices:
        add.mounts.append(Mount("dev", container_device_path(path, report.dev_root), path,
                                optional=True, why="rocm: device"))
    if libraries:
        add.ld_library_path.append(LIB_DIR)
    return add


def rocm_additions(request, config: dict, environ, dev_root: str = "/dev") -> HostAdditions:
    """What the planner merges for --rocm.  A node without the ROCm stack or without an AMD GPU
    runs the container anyway, with one warning (Apptainer: a warning per missing piece)."""
    report = discover(config, environ, dev_root=dev_root)
    add = additions_from_report(report)
    if not has_runtime(report):
        add.warnings.append(f"rocm: no ROCm runtime ({' or '.join(RUNTIMES)}) in the ldconfig "
                            "cache; the host's ROCm stack is not bound")
    if report.missing_devices:
        add.warnings.append(f"rocm: no AMD GPU device ({', '.join(report.missing_devices)} "
                            "missing); running without GPU access")
    return add
