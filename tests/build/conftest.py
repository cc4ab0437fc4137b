import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root")
