"""The real adapter (hpccont.host.nvml.Nvml) and the real pynvml, against the synthetic
libnvidia-ml.so.1: the driver's library is the only thing standing in for hardware here.

pynvml loads ``libnvidia-ml.so.1`` with dlopen, which reads LD_LIBRARY_PATH once at process
start, so each probe runs in a fresh interpreter."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_driver import VERSION, gpu_spec

pytestmark = pytest.mark.nvidia
REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys

from hpccont.host.nvml import Nvml, NvmlUnavailable
try:
    print(json.dumps(Nvml().probe().to_dict()))
except NvmlUnavailable as e:
    print(json.dumps({"unavailable": str(e)}))
"""


def probe(driver_lib, **env):
    e = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if driver_lib:
        e["LD_LIBRARY_PATH"] = str(driver_lib)
    e.update(env)
    r = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_driver_version_and_gpus(driver):
    spec = gpu_spec((0, "GPU-aaaa-0", "Synthetic H100"), (3, "GPU-bbbb-1", "Synthetic H100"))
    info = probe(driver.lib, SYNTHETIC_NVML_GPUS=spec)
    assert info["version"] == VERSION
    assert info["gpus"] == [{"index": 0, "minor": 0, "uuid": "GPU-aaaa-0", "name": "Synthetic H100"},
                            {"index": 1, "minor": 3, "uuid": "GPU-bbbb-1", "name": "Synthetic H100"}]


def test_gpu_denied_by_cgroup_is_a_note(driver):
    spec = gpu_spec((0, "GPU-a", "x"), (1, "GPU-b", "x"))
    info = probe(driver.lib, SYNTHETIC_NVML_GPUS=spec, SYNTHETIC_NVML_DENY="0")
    assert [g["uuid"] for g in info["gpus"]] == ["GPU-b"]
    assert info["notes"] == ["GPU index 0: Insufficient Permissions"]


def test_driver_not_loaded(driver):
    info = probe(driver.lib, SYNTHETIC_NVML_ERROR="9")
    assert info == {"unavailable": "NVML: Driver Not Loaded"}


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="this node has a real driver")
def test_no_library_at_all():
    info = probe(None)
    assert info == {"unavailable": "NVML: NVML Shared Library Not Found"}
