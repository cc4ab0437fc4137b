"""Which GPUs a job may use, and how the container is told: plain functions over data."""
import pytest

from hpccont.host import nvidia
from hpccont.host.nvml import Gpu
from nvml_double import UUIDS, four_gpus

pytestmark = pytest.mark.nvidia

# environment -> minor numbers selected (None: not constrained, all GPUs)
CASES = [
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": "2"}, [2]),
    ({"CUDA_VISIBLE_DEVICES": "3,1"}, [3, 1]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"CUDA_VISIBLE_DEVICES": "1,7,2"}, [1]),              # CUDA: list ends at the first bad entry
    ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
    ({"CUDA_VISIBLE_DEVICES": UUIDS[2]}, [2]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-4444"}, [3]),          # unique UUID prefix
    ({"CUDA_VISIBLE_DEVICES": "GPU-"}, []),               # ambiguous prefix
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, [0, 1, 2, 3]),
    ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
    ({"NVIDIA_VISIBLE_DEVICES": "void"}, []),
    ({"NVIDIA_VISIBLE_DEVICES": "0,2"}, [0, 2]),
    ({"CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "all"}, [1]),   # CUDA's wins
    ({"GPU_DEVICE_ORDINAL": "3"}, [3]),
    # Slurm, devices constrained: global ids in SLURM_JOB_GPUS, renumbered CUDA_VISIBLE_DEVICES
    ({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, [2, 3]),
    ({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "1"}, [3]),
    # Slurm without ConstrainDevices exports the same global ids in both
    ({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "2,3"}, [2, 3]),
    ({"SLURM_JOB_GPUS": "1"}, [1]),
    ({"SLURM_JOB_GPUS": "0,1,2,3", "SLURM_STEP_GPUS": "2"}, [2]),     # the step's own GPUs
    ({"SLURM_JOB_GPUS": "1", "GPU_DEVICE_ORDINAL": "0"}, [1]),
]


@pytest.mark.parametrize("environ,expected", CASES, ids=[repr(c[0]) for c in CASES])
def test_select_gpus(environ, expected):
    sel = nvidia.select_gpus(four_gpus(), environ)
    got = [g.minor for g in sel.gpus]
    if expected is None:
        assert got == [0, 1, 2, 3] and not sel.constrained
    else:
        assert got == expected and sel.constrained


def test_minor_numbers_need_not_follow_indices():
    gpus = [Gpu(0, 3, UUIDS[0]), Gpu(1, 0, UUIDS[1])]
    assert [g.uuid for g in nvidia.select_gpus(gpus, {"SLURM_JOB_GPUS": "0"}).gpus] == [UUIDS[1]]
    assert [g.minor for g in nvidia.select_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "0"}).gpus] == [3]


def test_unknown_slurm_gpu_is_noted():
    sel = nvidia.select_gpus(four_gpus(), {"SLURM_JOB_GPUS": "1,9"})
    assert [g.minor for g in sel.gpus] == [1]
    assert any("minor number 9" in n for n in sel.notes)


def test_bad_entry_is_noted():
    sel = nvidia.select_gpus(four_gpus(), {"CUDA_VISIBLE_DEVICES": "0,bogus"})
    assert [g.minor for g in sel.gpus] == [0] and "bogus" in sel.notes[0]


def test_mig_devices_are_passed_through():
    mig = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    sel = nvidia.select_gpus(four_gpus(), {"CUDA_VISIBLE_DEVICES": mig})
    assert sel.passthrough == mig and len(sel.gpus) == 4
    env = nvidia.inside_environment(sel, {}, private_dev=True)
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == mig


def test_inside_environment_private_dev_renumbers():
    sel = nvidia.select_gpus(four_gpus(), {"SLURM_JOB_GPUS": "1,3", "CUDA_VISIBLE_DEVICES": "0,1",
                                           "GPU_DEVICE_ORDINAL": "0,1"})
    env = nvidia.inside_environment(sel, {"GPU_DEVICE_ORDINAL": "0,1"}, private_dev=True)
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "0,1",
                   "GPU_DEVICE_ORDINAL": "0,1"}


def test_inside_environment_host_dev_names_uuids():
    # the host's /dev shows all four GPUs: ordinals would pick the wrong ones, UUIDs cannot
    sel = nvidia.select_gpus(four_gpus(), {"CUDA_VISIBLE_DEVICES": "3,1"})
    env = nvidia.inside_environment(sel, {}, private_dev=False)
    assert env["CUDA_VISIBLE_DEVICES"] == f"{UUIDS[3]},{UUIDS[1]}"
    assert env["NVIDIA_VISIBLE_DEVICES"] == env["CUDA_VISIBLE_DEVICES"]


def test_inside_environment_none_and_unconstrained():
    sel = nvidia.select_gpus(four_gpus(), {"CUDA_VISIBLE_DEVICES": ""})
    assert nvidia.inside_environment(sel, {}, True) == {"CUDA_VISIBLE_DEVICES": "",
                                                         "NVIDIA_VISIBLE_DEVICES": "none"}
    assert nvidia.inside_environment(nvidia.select_gpus(four_gpus(), {}), {}, True) == {}
