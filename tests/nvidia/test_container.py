"""``hpccont exec --nv`` and ``hpccont nv list`` end to end: the installed hpccont, a real container
(squashfs image with a program linked against libcuda.so.1), the synthetic driver.

The image carries its own libcuda.so.1 ("image libcuda") in a default library directory, so a
program that prints the synthetic host copy's string, loaded from the private library
directory, proves the host driver is bound and found first."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import helpers
import synthetic_driver as sd

pytestmark = [pytest.mark.nvidia]
GPUS = sd.gpu_spec((0, "GPU-0000aaaa-1111-2222-3333-444444444444", "Synthetic H100"),
                   (1, "GPU-1111bbbb-1111-2222-3333-444444444444", "Synthetic H100"))
PROBE = "/opt/probe/cudaprobe"


def _copy_real(src: str, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), dst)


@pytest.fixture(scope="session")
def cuda_image(world_tmp, driver):
    """busybox + the host's libc + a libcuda.so.1-linked probe + the image's own libcuda."""
    root = helpers.make_busybox_rootfs(world_tmp / "images" / "nv-rootfs")
    probe = sd.compile_probe(root / "opt/probe/cudaprobe", driver)
    out = subprocess.run(["ldd", str(probe)], capture_output=True, text=True,
                         env={"LD_LIBRARY_PATH": str(driver.lib)}).stdout
    for line in out.splitlines():
        parts = line.split()
        path = next((p for p in parts if p.startswith("/")), None)
        if path and "libcuda" not in path:
            _copy_real(path, root / path.lstrip("/"))
            _copy_real(path, root / "lib" / os.path.basename(path))
    sd.shared_lib(root / "usr/lib", "libcuda", "1.0", "1",
                  sd.LIBCUDA_C % {"marker": "image libcuda"}, '-DDRIVER_VERSION="1.0"',
                  '-DORIGIN="the image"')
    image = helpers.mksquashfs(root, world_tmp / "images" / "nv.sqsh")
    image.chmod(0o644)
    return image


@pytest.fixture(scope="session")
def nv_env(world_tmp, driver):
    cfg = driver.config_yaml(world_tmp / "nv-hpccont.yaml")
    return {"HPCCONT_CONFIG": str(cfg), "LD_LIBRARY_PATH": str(driver.lib),
            "SYNTHETIC_NVML_GPUS": GPUS, "PATH": f"{driver.bin}:/usr/local/bin:/usr/bin:/bin"}


def runtime_present():
    return (helpers.REPO / "hpccont" / "cli" / "launch.py").exists()


needs_runtime = pytest.mark.skipif(not runtime_present(), reason="container runtime not in tree")


def check_probe_uses_host(r, driver):
    assert r.returncode == 0, r.stderr
    assert f"synthetic libcuda {driver.version} from {driver.lib}" in r.stdout
    assert "loaded from /.singularity.d/libs/libcuda.so.1" in r.stdout


@needs_runtime
def test_probe_without_nv_uses_image_copy(hpccont, cuda_image, nv_env):
    r = hpccont("exec", cuda_image, PROBE, env=nv_env)
    assert r.returncode == 0, r.stderr
    assert "image libcuda 1.0 from the image" in r.stdout


@needs_runtime
@pytest.mark.root
def test_exec_nv_as_root(hpccont, cuda_image, nv_env, driver):
    if os.geteuid() != 0:
        pytest.skip("root mode")
    check_probe_uses_host(hpccont("exec", "--nv", cuda_image, PROBE, env=nv_env), driver)


@needs_runtime
@pytest.mark.rootless
def test_exec_nv_rootless(hpccont_user, cuda_image, nv_env, driver):
    r = hpccont_user("exec", "--nv", cuda_image, PROBE, env=nv_env)
    check_probe_uses_host(r, driver)


@needs_runtime
def test_libraries_binaries_configs_and_env_inside(hpccont, cuda_image, nv_env, driver):
    script = ("ls /.singularity.d/libs; echo ---; nvidia-smi; echo ---; cat " + str(driver.icd) +
              "; echo ---; echo CVD=$CUDA_VISIBLE_DEVICES NVD=$NVIDIA_VISIBLE_DEVICES; "
              "echo LD=$LD_LIBRARY_PATH")
    env = dict(nv_env, CUDA_VISIBLE_DEVICES="1")
    r = hpccont("exec", "--nv", cuda_image, "/bin/sh", "-c", script, env=env)
    assert r.returncode == 0, r.stderr
    libs, smi, icd, rest = r.stdout.split("---\n")
    assert set(libs.split()) == {"libcuda.so", "libcuda.so.1", "libnvidia-ml.so",
                                 "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so",
                                 "libnvidia-ptxjitcompiler.so.1", "libEGL.so", "libEGL.so.1"}
    assert smi.strip() == f"synthetic nvidia-smi, driver {driver.version}", r.stdout + r.stderr
    assert '"library_path": "libGLX_nvidia.so.0"' in icd
    uuid1 = GPUS.split(";")[1].split(":")[1]
    assert f"CVD={uuid1} NVD={uuid1}" in rest
    assert "LD=/.singularity.d/libs" in rest
    # no /dev/nvidia* on this machine: said once per missing node, never fatal
    assert "nv: device /dev/nvidia1 missing" in r.stderr


@needs_runtime
def test_no_driver_warns_and_runs_without_gpu(hpccont, cuda_image, nv_env):
    env = dict(nv_env, SYNTHETIC_NVML_ERROR="9")
    r = hpccont("exec", "--nv", cuda_image, PROBE, env=env)
    assert r.returncode == 0, r.stderr
    assert "image libcuda" in r.stdout
    lines = [x for x in r.stderr.splitlines() if "nv:" in x]
    assert len(lines) == 1 and "Driver Not Loaded" in lines[0] and "without GPU support" in lines[0]


@needs_runtime
def test_no_driver_strict_fails_in_one_line(hpccont, cuda_image, nv_env):
    env = dict(nv_env, SYNTHETIC_NVML_ERROR="9")
    r = hpccont("exec", "--nv-strict", cuda_image, PROBE, env=env)
    assert r.returncode == 8
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Driver Not Loaded" in r.stderr


def test_nv_list(hpccont, nv_env, driver):
    r = hpccont("nv", "list", env=dict(nv_env, SLURM_JOB_GPUS="1"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"driver version: {driver.version}" in out
    assert f"library list:   {driver.liblist}" in out
    assert f"libcuda.so.1" in out and f"<- {driver.lib}/libcuda.so.{driver.version}" in out
    assert f"skipped libcuda.so.1 at {driver.root}/old-driver/libcuda.so.1: version" in out
    assert "not in the ldconfig cache: libnvidia-opencl.so" in out
    assert f"nvidia-smi" in out and "not on PATH: nvidia-debugdump" in out
    assert "GPUs (SLURM_JOB_GPUS=1):" in out
    assert "index 0  minor 0" in out and "[not for this job]" in out
    assert "missing /dev/nvidia1" in out


def test_nv_list_json_and_no_driver(hpccont, nv_env):
    import json
    r = hpccont("nv", "list", "--json", env=nv_env)
    data = json.loads(r.stdout)
    assert data["driver"]["version"] == sd.VERSION and len(data["driver"]["gpus"]) == 2
    r = hpccont("nv", "list", env=dict(nv_env, SYNTHETIC_NVML_ERROR="9"))
    assert r.returncode == 1 and "Driver Not Loaded" in r.stdout
