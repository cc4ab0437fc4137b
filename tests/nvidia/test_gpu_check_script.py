"""tests/gpu/check_on_gpu_node.sh, run here against the synthetic driver (whose libcuda answers
the driver-API calls the script makes), so the script itself is known to work before it meets
a real GPU node: it passes with a driver and fails without one."""
import os
import subprocess

import pytest

import helpers
from synthetic_driver import gpu_spec

pytestmark = [pytest.mark.nvidia, pytest.mark.root, pytest.mark.slow]
SCRIPT = helpers.REPO / "tests" / "gpu" / "check_on_gpu_node.sh"
UUIDS = ["GPU-0a1b2c3d-0000-1111-2222-333344445555", "GPU-9f8e7d6c-0000-1111-2222-333344445555"]


def run_script(install, driver, world_tmp, **extra):
    if os.geteuid() != 0:
        pytest.skip("the script runs containers in root mode here")
    if not (helpers.REPO / "hpccont" / "cli" / "launch.py").exists():
        pytest.skip("container runtime not in tree")
    env = {"PATH": f"{driver.bin}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "HPCCONT": install["hpccont"], "LD_LIBRARY_PATH": str(driver.lib),
           "HPCCONT_CONFIG": str(driver.config_yaml(world_tmp / "nv-script.yaml")),
           "SYNTHETIC_NVML_GPUS": gpu_spec((0, UUIDS[0], "Synthetic H200"),
                                           (1, UUIDS[1], "Synthetic H200")),
           "HOME": "/root", "NV_FLAG": "--nv"}   # --nv-strict would want /dev/nvidia* nodes
    env.update(extra)
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_script_passes_with_a_driver(install, driver, world_tmp):
    r = run_script(install, driver, world_tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("PASS  nvidia-smi -L inside matches the host",
                 "PASS  libcuda.so.1 comes from the host driver",
                 "PASS  CUDA sees 2 device(s)",
                 f"PASS  only GPU 1 ({UUIDS[1]}) is visible inside",
                 "PASS: all checks"):
        assert line in r.stdout, r.stdout
    assert "FAIL" not in r.stdout


def test_script_fails_without_a_driver(install, driver, world_tmp):
    r = run_script(install, driver, world_tmp, SYNTHETIC_NVML_ERROR="9")
    assert r.returncode == 1
    assert "FAIL  nvidia-smi inside the container" in r.stdout
    assert "FAIL: " in r.stdout
