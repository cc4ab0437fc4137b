"""Fixtures for the signature tests: the SIF conformance data and fresh key pairs."""
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO.parent / "shared" / "sif-conformance"


@pytest.fixture(scope="session")
def conformance() -> Path:
    if not (CONFORMANCE / "expected.json").is_file():
        pytest.skip(f"SIF conformance data not found at {CONFORMANCE} (reference images and keys "
                    "from the SIF reference implementation)")
    return CONFORMANCE


@pytest.fixture(scope="session")
def expected(conformance) -> dict:
    return json.loads((conformance / "expected.json").read_text())


@pytest.fixture
def copy_image(conformance, tmp_path):
    """A writable copy of a conformance image."""
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copyfile(conformance / "images" / name, dst)
        dst.chmod(0o644)
        return dst
    return copy
