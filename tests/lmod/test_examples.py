"""The example modules in modulefiles/examples are what the generator writes today."""
import filecmp
import os
import subprocess
import sys

import helpers

EXAMPLES = helpers.REPO / "modulefiles" / "examples"


def test_examples_match_the_templates(tmp_path):
    r = subprocess.run([sys.executable, str(helpers.REPO / "modulefiles" / "make_examples.py"),
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    fresh = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    kept = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file())
    assert fresh == kept
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, EXAMPLES, fresh, shallow=False)
    assert not mismatch and not errors, (
        f"{mismatch}: run 'python3 modulefiles/make_examples.py' after changing the templates")
    for rel in fresh:
        assert os.access(EXAMPLES / rel, os.X_OK) == os.access(tmp_path / rel, os.X_OK)
