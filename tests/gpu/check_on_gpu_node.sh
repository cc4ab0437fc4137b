#!/bin/bash
# The real --nv check, for a node with an NVIDIA GPU and driver (CI machines have none).
#
#   tests/gpu/check_on_gpu_node.sh [IMAGE]
#
# IMAGE: any image (SIF, squashfs, sandbox).  If it has python3 with PyTorch, a PyTorch device
# query runs too.  Without IMAGE, a small squashfs image is built here (busybox-static, the
# host's libc and a C program that dlopen()s libcuda.so.1: no CUDA toolkit needed); that needs
# gcc, busybox (busybox-static) and mksquashfs.
#
# Environment: HPCCONT (default: hpccont on PATH, else this checkout through python3 -m),
# NV_FLAG (default --nv-strict: any missing driver piece or device node fails the launch),
# KEEP=1 keeps the work directory.  Prints PASS/FAIL per check; exit status 0 only if all pass.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/hpccont-gpu-check.XXXXXX)
chmod 755 "$work"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

if [ -n "${HPCCONT:-}" ]; then
    hpc=($HPCCONT)
elif command -v hpccont >/dev/null 2>&1; then
    hpc=(hpccont)
else
    hpc=(env "PYTHONPATH=$repo" python3 -m hpccont.cli.main)
fi

nv=${NV_FLAG:---nv-strict}
failures=0
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; failures=$((failures + 1)); }

cuquery_c='
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
typedef int (*init_t)(unsigned);
typedef int (*count_t)(int *);
typedef int (*dev_t_)(int *, int);
typedef int (*name_t)(char *, int, int);
typedef int (*uuid_t_)(unsigned char *, int);
typedef int (*ver_t)(int *);
int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { printf("dlopen libcuda.so.1 failed: %s\n", dlerror()); return 2; }
    init_t cuInit = (init_t)dlsym(h, "cuInit");
    count_t cuDeviceGetCount = (count_t)dlsym(h, "cuDeviceGetCount");
    dev_t_ cuDeviceGet = (dev_t_)dlsym(h, "cuDeviceGet");
    name_t cuDeviceGetName = (name_t)dlsym(h, "cuDeviceGetName");
    uuid_t_ cuDeviceGetUuid = (uuid_t_)dlsym(h, "cuDeviceGetUuid");
    ver_t cuDriverGetVersion = (ver_t)dlsym(h, "cuDriverGetVersion");
    Dl_info info;
    if (dladdr((void *)cuInit, &info)) printf("libcuda: %s\n", info.dli_fname);
    int v = 0, n = 0, r = cuInit(0);
    if (r) { printf("cuInit failed: %d\n", r); return 3; }
    cuDriverGetVersion(&v);
    cuDeviceGetCount(&n);
    printf("cuda driver api: %d\ndevices: %d\n", v, n);
    for (int i = 0; i < n; i++) {
        int d; char name[256]; unsigned char u[16];
        cuDeviceGet(&d, i);
        cuDeviceGetName(name, sizeof name, d);
        cuDeviceGetUuid(u, d);
        printf("device %d: %s GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n",
               i, name, u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
               u[12], u[13], u[14], u[15]);
    }
    return 0;
}
'

build_image() {
    local root="$work/rootfs" bb
    bb=$(command -v busybox) || { echo "busybox not found (install busybox-static)"; return 1; }
    mkdir -p "$root"/{bin,sbin,usr/bin,lib,lib64,etc,tmp,proc,sys,dev,home,opt,.singularity.d/libs}
    cp "$bb" "$root/bin/busybox"
    for a in $("$bb" --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
    echo 'root:x:0:' > "$root/etc/group"
    printf '%s' "$cuquery_c" > "$work/cuquery.c"
    gcc -O1 -o "$root/opt/cuquery" "$work/cuquery.c" -ldl || return 1
    # the program's own C library, at the paths its interpreter and the default search expect
    for lib in $(ldd "$root/opt/cuquery" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
        cp -L "$lib" "$root/lib/"
    done
    mksquashfs "$root" "$work/cuquery.sqsh" -noappend -quiet -all-root -no-progress >/dev/null || return 1
    chmod 644 "$work/cuquery.sqsh"
}

echo "== host"
if ! host_list=$(nvidia-smi -L 2>&1); then
    fail "nvidia-smi on the host: $host_list"
    echo "no working NVIDIA driver on this node; nothing else to check"
    exit 1
fi
echo "$host_list"
pass "nvidia-smi on the host"

echo "== hpccont nv list"
out=$("${hpc[@]}" nv list 2>&1)
rc=$?
echo "$out"
if [ "$rc" != 0 ]; then
    fail "hpccont nv list (exit $rc)"
elif echo "$out" | grep -q '^  libcuda.so.1 '; then
    pass "nv list finds libcuda.so.1"
else
    fail "nv list shows no libcuda.so.1"
fi

image=${1:-}
if [ -z "$image" ]; then
    echo "== building a test image"
    if build_image; then image="$work/cuquery.sqsh"; pass "test image built"; else fail "building the test image"; fi
fi
[ -n "$image" ] || { echo "$failures check(s) failed"; exit 1; }

echo "== nvidia-smi inside ($nv)"
if inside=$("${hpc[@]}" exec "$nv" "$image" nvidia-smi -L 2>"$work/stderr"); then
    cat "$work/stderr"; echo "$inside"
    [ "$inside" = "$host_list" ] && pass "nvidia-smi -L inside matches the host" \
        || fail "nvidia-smi -L inside differs from the host"
else
    cat "$work/stderr"; echo "$inside"; fail "nvidia-smi inside the container"
fi

n_host=$(echo "$host_list" | grep -c '^GPU ')
if "${hpc[@]}" exec "$image" test -x /opt/cuquery 2>/dev/null; then
    echo "== CUDA driver API inside"
    if q=$("${hpc[@]}" exec "$nv" "$image" /opt/cuquery 2>&1); then
        echo "$q"
        echo "$q" | grep -q '^libcuda: /.singularity.d/libs/libcuda.so.1' \
            && pass "libcuda.so.1 comes from the host driver" || fail "libcuda.so.1 not the bound one"
        [ "$(echo "$q" | sed -n 's/^devices: //p')" = "$n_host" ] \
            && pass "CUDA sees $n_host device(s)" || fail "CUDA device count differs from nvidia-smi"
    else
        echo "$q"; fail "CUDA query inside the container"
    fi
    last=$((n_host - 1))
    want_uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i "$last" | tr -d ' ')
    echo "== CUDA_VISIBLE_DEVICES=$last"
    if q=$(CUDA_VISIBLE_DEVICES=$last "${hpc[@]}" exec --nv "$image" /opt/cuquery 2>&1); then
        echo "$q"
        if [ "$(echo "$q" | sed -n 's/^devices: //p')" = 1 ] && echo "$q" | grep -qi "$want_uuid"; then
            pass "only GPU $last ($want_uuid) is visible inside"
        else
            fail "CUDA_VISIBLE_DEVICES=$last not honoured inside"
        fi
    else
        echo "$q"; fail "CUDA query with CUDA_VISIBLE_DEVICES"
    fi
fi

if "${hpc[@]}" exec "$image" python3 -c 'import torch' 2>/dev/null; then
    echo "== PyTorch inside"
    if q=$("${hpc[@]}" exec "$nv" "$image" python3 -c \
        'import torch; assert torch.cuda.is_available(); print(torch.cuda.device_count(), torch.cuda.get_device_name(0)); print((torch.ones(4, device="cuda") * 2).sum().item())' 2>&1); then
        echo "$q"
        echo "$q" | tail -1 | grep -q '^8.0$' && pass "PyTorch computes on the GPU" || fail "PyTorch result"
    else
        echo "$q"; fail "PyTorch CUDA inside the container"
    fi
fi

echo "== summary"
if [ "$failures" = 0 ]; then echo "PASS: all checks"; exit 0; fi
echo "FAIL: $failures check(s) failed"
exit 1
