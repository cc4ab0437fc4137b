"""Fuzzing the definition-file parser: templating, headers, sections, apps and stages, and what
the builder reads from a parsed file (%files pairs, %labels, includes, SCIF apps, interpreters).

Inputs: valid multi-stage files damaged line by line with the syntax's own tokens spliced in
(sections, header keywords, template braces, quotes, continuations), with build arguments,
and raw bytes read from a file as ``hpccont build`` reads it.  Allowed outcomes: a Definition,
or BuildError naming the file.  (tests/build/test_deffile.py has the hand-written cases.)
"""
import sys
from pathlib import Path

from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzlib import MemFile, Outcomes, fuzz_settings, kind, mutate_text, outcome  # noqa: E402

from hpccont.image import layout  # noqa: E402
from hpccont.image.build import builder, deffile, scif  # noqa: E402

SEEDS = [
    """\
%arguments
    VERSION=1.2
    GREETING=hello

Bootstrap: busybox
Stage: build

%post
    echo {{ VERSION }} > /version

Bootstrap: debootstrap
OSVersion: bookworm
MirrorURL: http://deb.debian.org/debian
Include: curl, less wget

%setup
    touch $HPCCONT_ROOTFS/setup
%files
    a.txt /opt/a.txt
    "b c.txt" '/opt/b c'
%files from build
    /version /opt/version
%post -c /bin/bash
    printf '%s\\n' {{GREETING}}
%environment
    export V={{ VERSION }}
%runscript
    echo run
%labels
    Maintainer someone
    Version {{ VERSION }}
%help
    Some help.
%appinstall tool
    make
%apprun tool
    exec tool "$@"
%appenv tool
    export T=1
%applabels tool
    Kind cli
%appfiles tool
    tool.c
""",
    """\
Bootstrap: docker-archive
From: image.tar   # a comment
Fingerprints: ABC, \\
  DEF

%post -c /bin/busybox sh
    echo '%post is not a section here'
    printf '%%d\\n' 1
%test
    true
%startscript
    exec daemon
%apphelp other
    help
%apptest other
    other --version
""",
    """\
Bootstrap: localimage
From: base.sif
Stage: one
%files
    x
Bootstrap: scratch
Stage: two
%files from one
    /x /y
%runscript -c /bin/sh -e
    echo {{ NAME }}
""",
]

TOKENS = ["%post", "%files", "%files from one", "%files from", "%arguments", "%labels",
          "%appinstall", "%appinstall tool", "%apprun tool", "%post -c", "%post -c sh",
          "%test -c /bin/sh", "%environment", "%bogus", "%%", "%", "Bootstrap: busybox",
          "Bootstrap:", "bootstrap: DEBOOTSTRAP", "Bootstrap: library", "From:", "From: x",
          "Stage: one", "Stage: b@d", "OSVersion:", "Include:", "Otherurl1: u", "Nope: x",
          "{{ VERSION }}", "{{ NAME }}", "{{", "}}", "{{ .Id }}", "{{ a-b.c }}", "X=1", "=",
          "'", '"', "\\", "\\\n", "#", " # c", ":", "\t", "\x00", "\r", "\ufeff", "é", "a b c"]

names = st.sampled_from(["VERSION", "NAME", "GREETING", "x", "", "a b"])


def parse_and_use(text: str, build_args: dict):
    d = deffile.parse(text, "fuzz.def", build_args)
    use(d)
    return "parsed"


def load_and_use(path: str):
    d = deffile.load(path)
    use(d)
    return "parsed"


def use(d: deffile.Definition) -> None:
    """What the builder reads from a parsed definition must not fail in another way."""
    assert d.stages and d.final is d.stages[-1]
    for stage in d.stages:
        # only a file without any Bootstrap line is one stage without a header
        assert stage.bootstrap or (stage.headerless and len(d.stages) == 1), stage
        assert stage.name
        stage.includes()
        for section in stage.sections:
            section.shell_argv()
            if section.name in ("files", "appfiles"):
                for src, dst, line in section.file_pairs(d.path):
                    assert isinstance(src, str) and isinstance(dst, str) and line > 0
        layout.labels_json(builder.parse_labels(stage.get("labels")))
        for app in scif.app_order(stage):
            scif.app_env(app)
            scif.base_env_script(app)


def test_fuzz_deffile_parser():
    seen = Outcomes()
    raw = MemFile("raw.def")

    @fuzz_settings()
    @given(st.binary(min_size=1, max_size=60))
    def one(case):
        choice, tape = case[0] % 8, case[1:]
        if choice == 7:
            raw.load(tape)
            seen.add(kind(outcome(load_and_use, raw.path)))
            return
        text = mutate_text(SEEDS[choice % len(SEEDS)], tape, TOKENS)
        args = {}
        if choice >= 4 and tape:            # build arguments, some of them unused or odd
            key = ["VERSION", "NAME", "GREETING", "x", "UNUSED", "a b"][tape[0] % 6]
            args[key] = tape[-3:].decode("latin-1")
        seen.add(kind(outcome(parse_and_use, text, args)))

    one()
    seen.check_volume()
    assert seen.counts.get("parsed") and seen.counts.get("BuildError"), seen.counts
    print(f"definition files: {seen.total} inputs: {seen.counts}")



def test_bootstrap_after_a_continued_header_starts_a_stage():
    """``Key: value \\`` then ``Bootstrap:``: the continuation must not swallow the next stage's
    header (the stage left without one would be built as an update of an existing sandbox)."""
    d = deffile.parse("Bootstrap: busybox\nFingerprints: ABC, \\\nBootstrap: scratch\n"
                      "%post\n    true\n", "c.def")
    assert [s.bootstrap for s in d.stages] == ["busybox", "scratch"]
    assert d.stages[0].header["fingerprints"].strip() == "ABC,"
