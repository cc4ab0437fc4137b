"""The one place hpccont talks to the NVIDIA driver: NVML through ``pynvml`` (nvidia-ml-py).

``Nvml.probe()`` returns plain data (DriverInfo); every decision about what to bind is made
from that data by ordinary functions in ``nvidia.py``.  Tests substitute this class, and only
this class, with a double that returns DriverInfo (tests/nvidia/nvml_double.py); end-to-end
tests instead keep this class and give pynvml a synthetic ``libnvidia-ml.so.1``.

pynvml is imported here, lazily: ``hpccont exec`` without ``--nv`` never pays for it.
"""
from __future__ import annotations

from ..record import factory, record
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import List


class NvmlUnavailable(Exception):
    """No usable driver: pynvml missing, libnvidia-ml not found, kernel module not loaded."""


@record
class Gpu:
    index: int        # NVML index (PCI bus order)
    minor: int        # /dev/nvidia<minor>
    uuid: str         # GPU-xxxxxxxx-...
    name: str = ""


@record
class DriverInfo:
    version: str                          # e.g. "535.104.05"
    gpus: List[Gpu] = factory(list)
    notes: List[str] = factory(list)   # GPUs NVML listed but would not open


class Nvml:
    """The real adapter.  Reads the driver version and each GPU's index, minor number and UUID."""

    def probe(self) -> DriverInfo:
        try:
            import pynvml
        except ImportError:
            raise NvmlUnavailable("nvidia-ml-py (module pynvml) is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML: {e}")
        try:
            return self._read(pynvml)
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML: {e}")
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    @staticmethod
    def _read(pynvml) -> DriverInfo:
        info = DriverInfo(version=_text(pynvml.nvmlSystemGetDriverVersion()))
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                gpu = Gpu(index=index,
                          minor=int(pynvml.nvmlDeviceGetMinorNumber(handle)),
                          uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                          name=_text(pynvml.nvmlDeviceGetName(handle)))
            except pynvml.NVMLError as e:
                # A job whose device cgroup denies a GPU still sees it counted; it is not ours.
                info.notes.append(f"GPU index {index}: {e}")
                continue
            info.gpus.append(gpu)
        return info


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
