"""Helpers shared by the image tests (plain functions, no fixtures)."""
import json

import helpers

# The shared conformance data lives next to the repository, not inside it.
CONFORMANCE = helpers.REPO.parent / "shared" / "sif-conformance"


def conformance_names() -> list:
    """Image names for parametrization; empty (tests then skip via the fixture) without the data."""
    expected = CONFORMANCE / "expected.json"
    if not expected.is_file():
        return ["(conformance data missing)"]
    return sorted(json.loads(expected.read_text()))
