"""Definition files Apptainer accepts, built for real (busybox agent): %post -c with an
interpreter and its arguments, $APPTAINER_LABELS in %post, a section given twice, %appstart,
a comment after a header line."""
import json
import subprocess

import pytest

from hpccont.image import sif

DEF = """\
Bootstrap: busybox   # the host's static busybox
Stage: final # one stage

%post -c /bin/busybox sh # a comment
    echo "ran by $0" > /post-shell
    echo "built.by post-section" >> "$APPTAINER_LABELS"
    echo "second.label two words" >> "$SINGULARITY_LABELS"

%labels
    from.labels yes

%post
    echo again > /post-again

%appstart web
    echo "web starts"

%apprun web
    echo "web runs"

%runscript
    echo first part
%runscript
    echo second part
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory, install):
    if subprocess.run(["sh", "-c", "command -v busybox"], capture_output=True).returncode:
        pytest.skip("busybox-static is not installed (the busybox agent copies it)")
    d = tmp_path_factory.mktemp("defbuild")
    (d / "x.def").write_text(DEF)
    out = d / "x.sif"
    r = subprocess.run([install["hpccont"], "build", "-q", str(out), str(d / "x.def")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_built_as_apptainer_would(hpccont, built):
    r = hpccont("exec", built, "sh", "-c", "cat /post-shell /post-again; ls -a / | grep -c build.labels")
    lines = r.stdout.splitlines()
    assert lines[:2] == ["ran by /.hpccont-build-script", "again"], r.stderr
    assert lines[2] == "0"                           # the labels file is gone from the image
    labels = dict(ln.split(": ", 1) for ln in hpccont("inspect", built).stdout.splitlines())
    assert labels["built.by"] == "post-section" and labels["second.label"] == "two words"
    assert labels["from.labels"] == "yes"
    assert hpccont("run", built).stdout == "first part\nsecond part\n"
    doc = json.loads(hpccont("inspect", "--all", built).stdout)
    app = doc["data"]["attributes"]["apps"]["web"]
    assert app["startscript"].endswith('echo "web starts"')
    assert app["runscript"].endswith('echo "web runs"')
    assert "web" in hpccont("inspect", "--list-apps", built).stdout
    image = sif.read_sif(str(built))
    assert image.read_object(image.descriptors[0]).decode() == DEF
