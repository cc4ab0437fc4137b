"""nv_additions end to end below the container: FakeNvml at the NVML boundary, everything else
real (ldconfig cache, ELF files, PATH lookup, device nodes made with mknod)."""
import os
import re
import stat

import pytest

from hpccont.errors import HostError
from hpccont.host import nvidia
from hpccont.runtime.request import ContainerRequest
from nvml_double import UUIDS, FakeNvml
from synthetic_driver import VERSION

pytestmark = pytest.mark.nvidia


@pytest.fixture
def dev_root(tmp_path):
    """Character devices with the driver's numbers (195: nvidia, 510: caps), as udev makes them."""
    if os.geteuid() != 0:
        pytest.skip("mknod of character devices needs root")
    d = tmp_path / "dev"
    (d / "nvidia-caps").mkdir(parents=True)
    nodes = {"nvidiactl": (195, 255), "nvidia-uvm": (508, 0), "nvidia-uvm-tools": (508, 1),
             "nvidia0": (195, 0), "nvidia1": (195, 1), "nvidia2": (195, 2),
             "nvidia-caps/nvidia-cap1": (510, 1), "nvidia-caps/nvidia-cap2": (510, 2)}
    for name, (major, minor) in nodes.items():
        os.mknod(d / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    (d / "nvidia3").write_text("not a device\n")   # must not pass for GPU 3's node
    return d


def req(**kw):
    return ContainerRequest(image="img.sif", argv=["true"], nv=True, **kw)


def env_with_driver(driver, **extra):
    return {"PATH": f"{driver.bin}:/usr/bin:/bin", **extra}


def test_additions_bind_libraries_binaries_configs_devices(driver, nv_config, dev_root):
    add = nvidia.nv_additions(req(), nv_config, env_with_driver(driver, CUDA_VISIBLE_DEVICES="1"),
                              nvml=FakeNvml(), dev_root=str(dev_root))
    by_target = {m.target: m for m in add.mounts}
    cuda = by_target["/.singularity.d/libs/libcuda.so.1"]
    assert cuda.kind == "bind" and cuda.readonly
    assert cuda.source == str(driver.lib / f"libcuda.so.{VERSION}")
    assert by_target["/.singularity.d/libs/libnvidia-ml.so.1"].source.endswith(VERSION)
    assert not any("opencl" in t for t in by_target)
    assert by_target["/usr/bin/nvidia-smi"].source == str(driver.bin / "nvidia-smi")
    assert by_target[str(driver.icd)].source == str(driver.icd)
    devs = {m.target: m.source for m in add.mounts if m.kind == "dev"}
    assert devs == {"/dev/nvidiactl": f"{dev_root}/nvidiactl",
                    "/dev/nvidia-uvm": f"{dev_root}/nvidia-uvm",
                    "/dev/nvidia-uvm-tools": f"{dev_root}/nvidia-uvm-tools",
                    "/dev/nvidia-caps/nvidia-cap1": f"{dev_root}/nvidia-caps/nvidia-cap1",
                    "/dev/nvidia-caps/nvidia-cap2": f"{dev_root}/nvidia-caps/nvidia-cap2",
                    "/dev/nvidia1": f"{dev_root}/nvidia1"}
    assert add.ld_library_path == ["/.singularity.d/libs"]
    # the site default binds the host's /dev, where every GPU shows: UUIDs name the right one
    assert add.env == {"CUDA_VISIBLE_DEVICES": UUIDS[1], "NVIDIA_VISIBLE_DEVICES": UUIDS[1]}
    assert add.warnings == []


def test_private_dev_renumbers_and_binds_only_chosen_gpus(driver, nv_config, dev_root):
    nv_config["mounts"]["dev"] = False
    environ = env_with_driver(driver, SLURM_JOB_GPUS="0,2", CUDA_VISIBLE_DEVICES="0,1")
    add = nvidia.nv_additions(req(), nv_config, environ, nvml=FakeNvml(), dev_root=str(dev_root))
    gpu_nodes = sorted(m.target for m in add.mounts if re.fullmatch(r"/dev/nvidia\d+", m.target))
    assert gpu_nodes == ["/dev/nvidia0", "/dev/nvidia2"]
    assert add.env["CUDA_VISIBLE_DEVICES"] == add.env["NVIDIA_VISIBLE_DEVICES"] == "0,1"


def test_fake_device_file_is_not_bound_and_is_reported(driver, nv_config, dev_root):
    add = nvidia.nv_additions(req(), nv_config, env_with_driver(driver, CUDA_VISIBLE_DEVICES="3"),
                              nvml=FakeNvml(), dev_root=str(dev_root))
    assert "/dev/nvidia3" not in {m.target for m in add.mounts}
    assert add.warnings == [f"nv: device {dev_root}/nvidia3 missing"]
    with pytest.raises(HostError, match="nvidia3 missing"):
        nvidia.nv_additions(req(nv_strict=True), nv_config,
                            env_with_driver(driver, CUDA_VISIBLE_DEVICES="3"),
                            nvml=FakeNvml(), dev_root=str(dev_root))


def test_no_driver_warns_once_and_adds_nothing(nv_config):
    add = nvidia.nv_additions(req(), nv_config, {}, nvml=FakeNvml(error="NVML: Driver Not Loaded"))
    assert add.mounts == [] and add.env == {} and add.ld_library_path == []
    assert add.warnings == ["nv: no NVIDIA driver (NVML: Driver Not Loaded); "
                            "running without GPU support"]


def test_no_driver_strict_is_host_error(nv_config):
    with pytest.raises(HostError) as e:
        nvidia.nv_additions(req(nv_strict=True), nv_config, {},
                            nvml=FakeNvml(error="nvidia-ml-py (module pynvml) is not installed"))
    assert "pynvml" in e.value.one_line() and "\n" not in e.value.one_line()


def test_site_always_is_silent_on_cpu_nodes(nv_config):
    nv_config["nvidia"]["always"] = True
    r = ContainerRequest(image="img.sif", argv=["true"])
    assert nvidia.nv_wanted(r, nv_config)
    add = nvidia.nv_additions(r, nv_config, {}, nvml=FakeNvml(error="NVML: Driver Not Loaded"))
    assert add.warnings == [] and add.mounts == []


def test_nv_wanted_follows_flags():
    cfg = {"nvidia": {"always": False}}
    assert not nvidia.nv_wanted(ContainerRequest(image="x"), cfg)
    assert nvidia.nv_wanted(ContainerRequest(image="x", nv_strict=True), cfg)


def test_driver_version_mismatch_means_no_libcuda(driver, nv_config, tmp_path):
    # NVML says 550.x but only 535.x/470.x libraries exist: nothing of the driver is bound
    add = nvidia.nv_additions(req(), nv_config, env_with_driver(driver),
                              nvml=FakeNvml(version="550.54.15", gpus=[]), dev_root=str(tmp_path))
    libs = [m.target for m in add.mounts if m.target.startswith("/.singularity.d/libs/")]
    assert libs == ["/.singularity.d/libs/libEGL.so.1", "/.singularity.d/libs/libEGL.so"]
    assert any("libcuda.so not found" in w for w in add.warnings)
    with pytest.raises(HostError, match="libcuda.so not found"):
        nvidia.nv_additions(req(nv_strict=True), nv_config, env_with_driver(driver),
                            nvml=FakeNvml(version="550.54.15", gpus=[]), dev_root=str(tmp_path))


def test_missing_binaries_and_configs_are_skipped(driver, nv_config, tmp_path):
    report = nvidia.discover(nv_config, {"PATH": "/nonexistent"}, nvml=FakeNvml(gpus=[]),
                             dev_root=str(tmp_path))
    assert "nvidia-smi" in report.missing_binaries and "nvidia-debugdump" in report.missing_binaries
    assert str(driver.root / "etc/OpenCL/vendors/nvidia.icd") in report.missing_configs
    assert report.missing_libraries == ["libnvidia-opencl.so"]
    add = nvidia.additions_from_report(report)
    assert not any(m.target.startswith("/usr/bin/") for m in add.mounts)
