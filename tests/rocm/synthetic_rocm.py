"""A synthetic AMD ROCm installation, built by the tests with gcc and ldconfig.

What is real: ELF shared objects compiled here and laid out as ROCm installs them under
/opt/rocm-X.Y.Z/lib (``libamdhip64.so.6.1.60100`` with soname ``libamdhip64.so.6`` and the
usual symlinks, the same for ``libhsa-runtime64``, ``librocm_smi64``, ``libhsakmt``), a
``libdrm_amdgpu`` in a system directory, a 32-bit ``libamdhip64`` (multiarch), ``rocminfo`` and
``rocm-smi`` programs, and a genuine ldconfig cache of all of it (``ldconfig -C CACHE -f CONF``).
``rocmliblist.conf`` is the one hpccont ships, unchanged.

What stands in for hardware: the device nodes.  ``fake_dev`` makes ``kfd`` and ``dri/card0``,
``dri/renderD128`` as real character devices with mknod (root), with the numbers of harmless
devices (1:3 /dev/null, 1:5 /dev/zero) so that a program opening them inside a container works.
"""
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nvidia"))
from synthetic_driver import gcc, shared_lib  # noqa: E402

RELEASE = "6.1.0"
HIP_MARKER = "synthetic libamdhip64"
SHIPPED = Path(__file__).resolve().parents[2] / "site-config" / "rocmliblist.conf"

# The two HIP runtime calls a probe needs; the answers say which copy was loaded.
LIBHIP_C = r"""
const char *hpccont_synthetic_hip(void) { return "%(marker)s " RELEASE " from " ORIGIN; }
int hipGetDeviceCount(int *n) { *n = 1; return 0; }
int hipRuntimeGetVersion(int *v) { *v = 60140091; return 0; }
"""

SIMPLE_C = "int %(sym)s(void) { return 1; }\n"

PROBE_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
const char *hpccont_synthetic_hip(void);
int main(void) {
    Dl_info info;
    if (!dladdr((void *)hpccont_synthetic_hip, &info)) return 3;
    printf("%s\nloaded from %s\n", hpccont_synthetic_hip(), info.dli_fname);
    return 0;
}
"""

ROCMINFO_SH = "#!/bin/sh\necho 'ROCk module is loaded'\necho 'synthetic rocminfo @RELEASE@'\n"
SMI_SH = "#!/bin/sh\necho 'synthetic rocm-smi @RELEASE@'\n"


@dataclass
class SyntheticRocm:
    root: Path
    lib: Path            # /opt/rocm-X.Y.Z/lib's stand-in
    syslib: Path         # a system library directory (libdrm_amdgpu)
    bin: Path            # rocminfo, rocm-smi
    cache: Path          # the ldconfig cache
    liblist: Path = SHIPPED
    release: str = RELEASE

    @property
    def ldconfig(self) -> str:
        return f"/sbin/ldconfig -C {self.cache}"

    def config_yaml(self, path: Path) -> Path:
        path.write_text(f"rocm:\n  ldconfig: \"{self.ldconfig}\"\n  liblist: {self.liblist}\n")
        path.chmod(0o644)
        return path


def build(root: Path) -> SyntheticRocm:
    root.mkdir(parents=True, exist_ok=True)
    lib, syslib, lib32, bindir = (root / f"opt/rocm-{RELEASE}/lib", root / "usr/lib64",
                                  root / "usr/lib32", root / f"opt/rocm-{RELEASE}/bin")
    full = "6.1.60100"
    shared_lib(lib, "libamdhip64", full, "6", LIBHIP_C % {"marker": HIP_MARKER},
               f'-DRELEASE="{RELEASE}"', f'-DORIGIN="{lib}"')
    shared_lib(lib, "libhsa-runtime64", "1.13.60100", "1", SIMPLE_C % {"sym": "hsa_init"})
    shared_lib(lib, "libhsakmt", "1.0.60100", "1", SIMPLE_C % {"sym": "hsaKmtOpenKFD"})
    shared_lib(lib, "librocm_smi64", "7.2.60100", "7", SIMPLE_C % {"sym": "rsmi_init"})
    shared_lib(syslib, "libdrm_amdgpu", "1.0.0", "1", SIMPLE_C % {"sym": "amdgpu_device_initialize"})
    # A 32-bit copy, as multiarch hosts install; only libc-free code links without multilib.
    shared_lib(lib32, "libamdhip64", full, "6", SIMPLE_C % {"sym": "hip32"}, "-m32", "-nostdlib")
    bindir.mkdir(parents=True, exist_ok=True)
    for name, text in (("rocminfo", ROCMINFO_SH), ("rocm-smi", SMI_SH)):
        (bindir / name).write_text(text.replace("@RELEASE@", RELEASE))
        (bindir / name).chmod(0o755)
    conf = root / "ld.so.conf"
    conf.write_text(f"{lib}\n{syslib}\n{lib32}\n")
    cache = root / "ld.so.cache"
    # -X: leave every directory's links alone (only the cache file is written).
    subprocess.run(["/sbin/ldconfig", "-X", "-C", str(cache), "-f", str(conf)], check=True,
                   capture_output=True)
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
    return SyntheticRocm(root, lib, syslib, bindir, cache)


def compile_probe(out: Path, rocm: SyntheticRocm) -> Path:
    """A program linked against libamdhip64.so.6 that prints which copy it got and from where."""
    return gcc(out, PROBE_C, f"-L{rocm.lib}", "-lamdhip64")


# name -> (major, minor): devices that are safe to open, standing in for the GPU's.
FAKE_NODES = {"kfd": (1, 5), "dri/card0": (1, 3), "dri/renderD128": (1, 5)}


def fake_dev(root: Path) -> Path:
    """A /dev stand-in with kfd and one GPU's DRI nodes as character devices (needs root),
    a by-path link and a plain file named like a node (neither may be bound)."""
    (root / "dri/by-path").mkdir(parents=True)
    for name, (major, minor) in FAKE_NODES.items():
        os.mknod(root / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    (root / "dri/renderD129").write_text("not a device\n")
    (root / "dri/by-path/pci-0000:c1:00.0-render").symlink_to("../renderD128")
    return root
