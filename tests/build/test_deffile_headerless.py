"""Definition files without a ``Bootstrap:`` header, as Apptainer's parser reads them.

Translated from Apptainer's good-input corpus (pkg/build/types/parser/testdata_good:
``noheader``, ``noheadercomments``, ``noheaderwhitespace``: the same sections with nothing,
a comment, or a blank line before the first one; all three parse to a nil header and the same
sections) and ``zypper_sle`` (a header value continued over lines with ``\\n\\``).  What
Apptainer does with such a file: the parser accepts it, and ``build`` refuses to build it from
nothing (every stage needs a header).  Here the sections alone update an existing sandbox
(``build --update``, which skips the header anyway); a plain build is refused in one line.
The builds run as the unprivileged test user (--fakeroot)."""
import json
import os

import pytest

from hpccont.errors import BuildError
from hpccont.image.build.builder import parse_labels
from hpccont.image.build.deffile import parse

SECTIONS = """\
%help
Helpful text.
# # kept: a comment line inside %help
%setup
    touch ${APPTAINER_ROOTFS}/from-setup

# a comment between sections
%files
one.txt
two.txt /opt

%labels
Maintainer Someone
Version v2.0

%environment
    FIRST=alpha
    SECOND=beta # a comment kept in the script
    export FIRST SECOND

%post
    echo 'a line continued' \\
    'on the next' > /from-post
    echo 'export FROM_POST=yes' >> $APPTAINER_ENVIRONMENT

%runscript
    echo "sections-only runscript: $*"
"""

PREFIXES = {"noheader": "", "noheadercomments": "# a comment before anything\n",
            "noheaderwhitespace": "\n"}


@pytest.mark.parametrize("case", sorted(PREFIXES))
def test_headerless_files_parse_to_one_stage_without_header(case):
    d = parse(PREFIXES[case] + SECTIONS, f"{case}.def")
    assert len(d.stages) == 1
    stage = d.final
    assert stage.header == {} and stage.headerless and stage.bootstrap == ""
    assert [s.name for s in stage.sections] == ["help", "setup", "files", "labels",
                                                "environment", "post", "runscript"]
    assert stage.get("help").body.splitlines() == [
        "Helpful text.", "# # kept: a comment line inside %help"]
    assert "SECOND=beta # a comment kept in the script" in stage.get("environment").body
    pairs = [(src, dst) for src, dst, _ in stage.get("files").file_pairs("x")]
    assert pairs == [("one.txt", "one.txt"), ("two.txt", "/opt")]
    assert parse_labels(stage.get("labels")) == {"Maintainer": "Someone", "Version": "v2.0"}
    assert "'on the next' > /from-post" in stage.get("post").body


def test_headerless_file_with_arguments():
    d = parse("%arguments\n    WHO=me\n%labels\n    By {{ WHO }}\n", "args.def",
              {"WHO": "you"})
    assert d.final.headerless and d.final.get("labels").body.strip() == "By you"


@pytest.mark.parametrize("text,line,fragment", [
    # a header keyword without Bootstrap: Apptainer's build cannot start from it either
    ("From: somewhere\n%post\n  true\n", 1, "before 'Bootstrap:'"),
    # sections above the first of several stages belong to none (Apptainer: "all must have
    # headers")
    ("%post\n  true\nBootstrap: busybox\n", 1, "before the first 'Bootstrap:' header"),
    ("# nothing but comments\n\n", 1, "empty definition file"),
    ("not a header line\n%post\n  true\n", 1, "expected 'Keyword: value'"),
])
def test_what_stays_refused(text, line, fragment):
    with pytest.raises(BuildError) as e:
        parse(text, "bad.def")
    assert str(e.value).startswith(f"bad.def:{line}: ") and fragment in str(e.value), str(e.value)


def test_header_value_continued_over_lines():
    """zypper_sle: ``\\n\\`` at a line's end is a newline in the value, ``\\`` alone joins."""
    text = ("Bootstrap: zypper\nOSVersion: 15.1\n"
            "ProductPGP: -----BEGIN KEY-----\\n\\\n"
            "Version: 1\\n\\\n"
            "\\n\\\n"
            "AAAA\\\n"
            "BBBB\\n\\\n"
            "-----END KEY-----\n"
            "Otherurl0: https://example.org/one\nOtherurl1: https://example.org/two\n"
            "Modules: a,b\nRegcode: X\nUser: u@example.org\nRegisterUrl: https://r.example.org\n")
    h = parse(text, "z.def").final.header
    assert h["productpgp"] == "-----BEGIN KEY-----\nVersion: 1\n\nAAAABBBB\n-----END KEY-----"
    assert h["otherurl1"] == "https://example.org/two" and h["modules"] == "a,b"


# --------------------------------------------------------------------------- builds

@pytest.fixture
def workdir(shared_tmp, test_user):
    for name, text in (("one.txt", "one\n"), ("two.txt", "two\n"),
                       ("base.def", "Bootstrap: busybox\n%runscript\n    echo base\n"),
                       ("sections.def", "# sections only\n" + SECTIONS)):
        (shared_tmp / name).write_text(text)
        os.chmod(shared_tmp / name, 0o644)
    return shared_tmp


@pytest.mark.rootless
def test_sections_only_update_an_existing_sandbox(hpccont_user, workdir):
    sb = workdir / "sb"
    r = hpccont_user("build", "--fakeroot", "--sandbox", sb, workdir / "base.def", cwd=workdir)
    assert r.returncode == 0, r.stderr
    (sb / "kept").write_text("from before\n")
    r = hpccont_user("build", "--fakeroot", "--update", sb, workdir / "sections.def",
                     cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "bootstrap" not in r.stderr.lower()                 # nothing bootstrapped
    assert (sb / "kept").read_text() == "from before\n"        # the existing image, updated
    assert (sb / "from-setup").exists() and (sb / "one.txt").read_text() == "one\n"
    assert (sb / "opt").read_text() == "two\n"        # no /opt in busybox: copied as /opt, as cp does
    assert (sb / "from-post").read_text() == "a line continued on the next\n"
    labels = json.loads((sb / ".singularity.d/labels.json").read_text())
    assert labels["Maintainer"] == "Someone" and labels["Version"] == "v2.0"
    # the base image's own labels stay (the sections-only file has no agent of its own)
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "busybox"
    r = hpccont_user("run", sb, "x", "y", cwd=workdir)
    assert r.stdout == "sections-only runscript: x y\n", r.stderr
    r = hpccont_user("exec", sb, "sh", "-c", "echo $FIRST $SECOND $FROM_POST", cwd=workdir)
    assert r.stdout == "alpha beta yes\n", r.stderr


@pytest.mark.rootless
def test_sections_only_cannot_build_from_nothing(hpccont_user, workdir):
    r = hpccont_user("build", "--fakeroot", "--sandbox", workdir / "new", workdir / "sections.def",
                     cwd=workdir)
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "no 'Bootstrap:' header" in r.stderr and "--update" in r.stderr
    assert not (workdir / "new").exists()
