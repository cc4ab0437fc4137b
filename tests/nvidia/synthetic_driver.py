"""A synthetic NVIDIA driver installation, built by the tests with gcc and ldconfig.

What is real: ELF shared objects compiled here and laid out like a driver install
(``libcuda.so.<ver>`` with soname ``libcuda.so.1`` and the usual symlinks, the same for
``libnvidia-ml`` and ``libnvidia-ptxjitcompiler``), a vendor-neutral ``libEGL.so.1.1.0``, a stale
``libcuda`` and ``libnvidia-opencl`` of an older driver in another directory, a 32-bit ``libcuda`` (multiarch), an
``nvidia-smi`` program, a Vulkan ICD file, and a genuine ldconfig cache of all of it
(``ldconfig -C CACHE -f CONF``).

What stands in for hardware: ``libnvidia-ml.so.<ver>`` implements the NVML entry points pynvml
calls (init, driver version, device count/handle/minor/UUID/name) and answers from the variables
``SYNTHETIC_NVML_GPUS`` ("minor:uuid:name;..."), ``SYNTHETIC_NVML_ERROR`` (an NVML return code
for nvmlInit, e.g. 9 = driver not loaded) and ``SYNTHETIC_NVML_DENY`` (indices whose handle is
refused, as under a device cgroup).  So the real pynvml and the real ``hpccont.host.nvml.Nvml``
adapter run unchanged against it.
"""
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

VERSION = "535.104.05"
STALE_VERSION = "470.82.01"
CUDA_MARKER = "synthetic libcuda"

# The driver API calls tests/gpu/check_on_gpu_node.sh makes, answering from SYNTHETIC_NVML_GPUS
# and honouring CUDA_VISIBLE_DEVICES (ordinals or UUIDs) the way libcuda does.
LIBCUDA_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
const char *hpccont_synthetic_libcuda(void) { return "%(marker)s " DRIVER_VERSION " from " ORIGIN; }
static int n = -1;
static char uuid[16][64], name[16][64];
int cuInit(unsigned int flags) {
    char all[16][64], names[16][64], buf[4096], vis[1024];
    int total = 0;
    (void)flags;
    n = 0;
    snprintf(buf, sizeof buf, "%%s", getenv("SYNTHETIC_NVML_GPUS") ? getenv("SYNTHETIC_NVML_GPUS") : "");
    for (char *s1 = NULL, *it = strtok_r(buf, ";", &s1); it && total < 16; it = strtok_r(NULL, ";", &s1)) {
        char *s2 = NULL, *minor = strtok_r(it, ":", &s2), *u = strtok_r(NULL, ":", &s2), *nm = strtok_r(NULL, "", &s2);
        if (!minor || !u) continue;
        snprintf(all[total], 64, "%%s", u);
        snprintf(names[total], 64, "%%s", nm ? nm : "Synthetic GPU");
        total++;
    }
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    if (!cvd) {
        for (int i = 0; i < total; i++) { strcpy(uuid[n], all[i]); strcpy(name[n++], names[i]); }
        return 0;
    }
    snprintf(vis, sizeof vis, "%%s", cvd);
    for (char *s3 = NULL, *t = strtok_r(vis, ",", &s3); t; t = strtok_r(NULL, ",", &s3)) {
        int k = -1;
        for (int i = 0; i < total; i++)
            if (strcmp(t, all[i]) == 0 || (t[0] >= '0' && t[0] <= '9' && atoi(t) == i)) k = i;
        if (k < 0) break;
        strcpy(uuid[n], all[k]); strcpy(name[n++], names[k]);
    }
    return 0;
}
int cuDriverGetVersion(int *v) { *v = 12020; return 0; }
int cuDeviceGetCount(int *c) { if (n < 0) return 3; *c = n; return 0; }
int cuDeviceGet(int *d, int i) { if (i >= n) return 101; *d = i; return 0; }
int cuDeviceGetName(char *out, int len, int d) { snprintf(out, len, "%%s", name[d]); return 0; }
int cuDeviceGetUuid(unsigned char *out, int d) {
    unsigned v[16];
    if (sscanf(uuid[d], "GPU-%%2x%%2x%%2x%%2x-%%2x%%2x-%%2x%%2x-%%2x%%2x-%%2x%%2x%%2x%%2x%%2x%%2x",
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10],
               &v[11], &v[12], &v[13], &v[14], &v[15]) != 16) { memset(out, 0, 16); return 0; }
    for (int i = 0; i < 16; i++) out[i] = (unsigned char)v[i];
    return 0;
}
"""

LIBNVML_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXGPU 16
static int ngpu = -1;
static unsigned minors[MAXGPU];
static char uuids[MAXGPU][96], names[MAXGPU][96];

static void load(void) {
    if (ngpu >= 0) return;
    ngpu = 0;
    const char *spec = getenv("SYNTHETIC_NVML_GPUS");
    if (!spec) return;
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *item = strtok_r(buf, ";", &save); item && ngpu < MAXGPU;
         item = strtok_r(NULL, ";", &save)) {
        char *minor = strtok(item, ":"), *uuid = strtok(NULL, ":"), *name = strtok(NULL, "");
        if (!minor || !uuid) continue;
        minors[ngpu] = (unsigned)atoi(minor);
        snprintf(uuids[ngpu], 96, "%s", uuid);
        snprintf(names[ngpu], 96, "%s", name ? name : "Synthetic GPU");
        ngpu++;
    }
}

static int denied(unsigned i) {
    const char *d = getenv("SYNTHETIC_NVML_DENY");
    char want[16];
    snprintf(want, sizeof want, "%u", i);
    if (!d) return 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", d);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (strcmp(t, want) == 0) return 1;
    return 0;
}

int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    const char *e = getenv("SYNTHETIC_NVML_ERROR");
    load();
    return e ? atoi(e) : 0;
}
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int r) {
    switch (r) {
    case 0: return "Success";
    case 4: return "Insufficient Permissions";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}
int nvmlSystemGetDriverVersion(char *out, unsigned int len) {
    snprintf(out, len, "%s", DRIVER_VERSION);
    return 0;
}
int nvmlDeviceGetCount_v2(unsigned int *n) { load(); *n = (unsigned)ngpu; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) {
    load();
    if (i >= (unsigned)ngpu) return 2;
    if (denied(i)) return 4;
    *h = (void *)(size_t)(i + 1);
    return 0;
}
int nvmlDeviceGetMinorNumber(void *h, unsigned int *m) { *m = minors[(size_t)h - 1]; return 0; }
int nvmlDeviceGetUUID(void *h, char *out, unsigned int len) {
    snprintf(out, len, "%s", uuids[(size_t)h - 1]);
    return 0;
}
int nvmlDeviceGetName(void *h, char *out, unsigned int len) {
    snprintf(out, len, "%s", names[(size_t)h - 1]);
    return 0;
}
"""

# nvidia-smi's answers that the scripts use: -L, --query-gpu=uuid -i N, and a banner otherwise.
SMI_SH = r"""#!/bin/sh
case "$1" in
-L) echo "$SYNTHETIC_NVML_GPUS" | tr ';' '\n' | awk -F: 'NF>=2 {printf "GPU %d: %s (UUID: %s)\n", NR-1, $3, $2}' ;;
--query-gpu=uuid) echo "$SYNTHETIC_NVML_GPUS" | tr ';' '\n' | awk -F: -v i="$4" 'NR-1==i {print $2}' ;;
*) echo "synthetic nvidia-smi, driver @VERSION@" ;;
esac
"""

SIMPLE_C = "int %(sym)s(void) { return 1; }\n"

PROBE_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
const char *hpccont_synthetic_libcuda(void);
int main(void) {
    Dl_info info;
    if (!dladdr((void *)hpccont_synthetic_libcuda, &info)) return 3;
    printf("%s\nloaded from %s\n", hpccont_synthetic_libcuda(), info.dli_fname);
    return 0;
}
"""


@dataclass
class SyntheticDriver:
    root: Path
    lib: Path            # the driver's library directory
    bin: Path            # holds nvidia-smi
    cache: Path          # the ldconfig cache
    liblist: Path        # an nvliblist.conf naming these files
    icd: Path            # a Vulkan ICD json (config file)
    version: str = VERSION

    @property
    def ldconfig(self) -> str:
        return f"/sbin/ldconfig -C {self.cache}"

    def config_yaml(self, path: Path) -> Path:
        path.write_text(f"nvidia:\n  ldconfig: \"{self.ldconfig}\"\n  liblist: {self.liblist}\n")
        path.chmod(0o644)
        return path


def gcc(out: Path, source: str, *args: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    subprocess.run(["gcc", "-O0", "-o", str(out), str(src), *args], check=True,
                   capture_output=True)
    src.unlink()
    return out


def shared_lib(directory: Path, stem: str, version: str, soname_major: str, source: str,
               *cflags: str) -> Path:
    """``<stem>.so.<version>`` with soname ``<stem>.so.<major>`` and both symlinks, like an installer."""
    directory.mkdir(parents=True, exist_ok=True)
    real = directory / f"{stem}.so.{version}"
    soname = f"{stem}.so.{soname_major}"
    gcc(real, source, "-shared", "-fPIC", f"-Wl,-soname,{soname}", *cflags)
    for link, to in ((directory / soname, real.name), (directory / f"{stem}.so", soname)):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(to)
    return real


def build(root: Path, version: str = VERSION) -> SyntheticDriver:
    root.mkdir(parents=True, exist_ok=True)
    lib, stale, lib32, bindir = root / "lib64", root / "old-driver", root / "lib32", root / "bin"
    origin = f'-DORIGIN="{lib}"'
    shared_lib(lib, "libcuda", version, "1", LIBCUDA_C % {"marker": CUDA_MARKER},
               f'-DDRIVER_VERSION="{version}"', origin)
    shared_lib(lib, "libnvidia-ml", version, "1", LIBNVML_C, f'-DDRIVER_VERSION="{version}"')
    shared_lib(lib, "libnvidia-ptxjitcompiler", version, "1", SIMPLE_C % {"sym": "ptxjit"})
    shared_lib(lib, "libEGL", "1.1.0", "1", SIMPLE_C % {"sym": "eglGetDisplay"})
    shared_lib(stale, "libcuda", STALE_VERSION, "1", LIBCUDA_C % {"marker": "stale libcuda"},
               f'-DDRIVER_VERSION="{STALE_VERSION}"', f'-DORIGIN="{stale}"')
    # Left behind by the old driver only: no current copy exists, and it must not be bound.
    shared_lib(stale, "libnvidia-opencl", STALE_VERSION, "1", SIMPLE_C % {"sym": "clStale"})
    # A 32-bit copy, as multiarch hosts install; only libc-free code links without multilib.
    shared_lib(lib32, "libnvidia-ml", version, "1", SIMPLE_C % {"sym": "nvml32"},
               "-m32", "-nostdlib")
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"
    smi.write_text(SMI_SH.replace("@VERSION@", version))
    smi.chmod(0o755)
    icd = root / "etc/vulkan/icd.d/nvidia_icd.json"
    icd.parent.mkdir(parents=True, exist_ok=True)
    icd.write_text('{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0"}}\n')
    conf = root / "ld.so.conf"
    conf.write_text(f"{lib}\n{lib32}\n{stale}\n")
    cache = root / "ld.so.cache"
    # -X: leave every directory's links alone (only the cache file is written).
    subprocess.run(["/sbin/ldconfig", "-X", "-C", str(cache), "-f", str(conf)], check=True,
                   capture_output=True)
    liblist = root / "nvliblist.conf"
    liblist.write_text("# test list\nnvidia-smi\nnvidia-debugdump\n"
                       "libcuda.so\nlibnvidia-ml.so\nlibnvidia-ptxjitcompiler.so\nlibEGL.so\n"
                       "libnvidia-opencl.so\n"
                       f"{icd}\n{root}/etc/OpenCL/vendors/nvidia.icd\n")
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
    return SyntheticDriver(root, lib, bindir, cache, liblist, icd, version)


def compile_probe(out: Path, driver: SyntheticDriver) -> Path:
    """A program linked against libcuda.so.1 that prints which libcuda it got and from where."""
    return gcc(out, PROBE_C, f"-L{driver.lib}", "-lcuda")


def gpu_spec(*gpus) -> str:
    """SYNTHETIC_NVML_GPUS value from (minor, uuid, name) tuples."""
    return ";".join(f"{m}:{u}:{n}" for m, u, n in gpus)
