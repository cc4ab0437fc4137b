"""Fixtures for the image tests: the SIF conformance files and damaged copies of them."""
import json
import shutil
from pathlib import Path

import pytest

from tests_image_util import CONFORMANCE


@pytest.fixture(scope="session")
def conformance():
    """(images dir, expected dict).  Skipped where the shared conformance data is not present."""
    images = CONFORMANCE / "images"
    expected = CONFORMANCE / "expected.json"
    if not images.is_dir() or not expected.is_file():
        pytest.skip(f"SIF conformance data not found at {CONFORMANCE} "
                    "(the sylabs/sif reference images, shared next to the repository)")
    return images, json.loads(expected.read_text())


@pytest.fixture
def damaged(tmp_path, conformance):
    """damaged(name, mutate) -> path of a copy of a conformance image changed by mutate(bytearray)."""
    images, _ = conformance

    def make(name: str, mutate, out_name: str = "damaged.sif") -> Path:
        data = bytearray((images / name).read_bytes())
        result = mutate(data)
        data = data if result is None else result
        out = tmp_path / out_name
        out.write_bytes(bytes(data))
        return out
    return make


@pytest.fixture
def copy_image(tmp_path, conformance):
    images, _ = conformance

    def make(name: str) -> Path:
        out = tmp_path / name
        shutil.copyfile(images / name, out)
        return out
    return make
