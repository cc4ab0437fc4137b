"""``FakeNvml``: the test double of ``hpccont.host.nvml.Nvml``, and the only substitute in these tests.

It stands exactly where the real adapter asks the driver (``probe() -> DriverInfo``); everything
after that boundary (library lookup in a real ldconfig cache, ELF checks, GPU selection, device
nodes, mounts) runs unchanged.  Tests that need pynvml itself use the synthetic
``libnvidia-ml.so`` from synthetic_driver.py instead of this double.
"""
from hpccont.host.nvml import DriverInfo, Gpu, NvmlUnavailable

UUIDS = ["GPU-11111111-aaaa-bbbb-cccc-000000000000",
         "GPU-22222222-aaaa-bbbb-cccc-000000000001",
         "GPU-33333333-aaaa-bbbb-cccc-000000000002",
         "GPU-44444444-aaaa-bbbb-cccc-000000000003"]


def four_gpus():
    return [Gpu(index=i, minor=i, uuid=UUIDS[i], name="Synthetic A100") for i in range(4)]


class FakeNvml:
    """Answers ``probe()`` with fixed data, or raises NvmlUnavailable(``error``)."""

    def __init__(self, version="535.104.05", gpus=None, error=None):
        self.version = version
        self.gpus = four_gpus() if gpus is None else gpus
        self.error = error
        self.calls = 0

    def probe(self) -> DriverInfo:
        self.calls += 1
        if self.error:
            raise NvmlUnavailable(self.error)
        return DriverInfo(self.version, list(self.gpus))
