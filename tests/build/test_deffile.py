"""Definition-file parser: header keywords, sections, SCIF apps, stages, templating, errors."""
import pytest
from hypothesis import given, settings, strategies as st

from hpccont.errors import BuildError, HpccontError
from hpccont.image.build import deffile
from hpccont.image.build.deffile import parse

FULL = """\
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
    b.txt
%files from build
    /version /opt/version
%post -c /bin/bash
    printf '%s\\n' {{GREETING}}
%environment
    export V={{ VERSION }}
%runscript
    echo run
%startscript
    echo start
%test
    true
%labels
    Maintainer someone
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
%apphelp tool
    Tool help.
%appfiles tool
    tool.c
%apptest tool
    tool --version
"""


def test_full_file_parses():
    d = parse(FULL, "full.def")
    assert [s.name for s in d.stages] == ["build", "stage-2"]
    first, final = d.stages
    assert first.bootstrap == "busybox"
    assert first.get("post").body.strip() == "echo 1.2 > /version"
    assert final.header["osversion"] == "bookworm"
    assert final.includes() == ["curl", "less", "wget"]
    assert final.get("post").interpreter == "/bin/bash"
    assert "printf '%s\\n' hello" in final.get("post").body
    assert final.get("environment").body.strip() == "export V=1.2"
    files = final.all("files")
    assert [f.from_stage for f in files] == [None, "build"]
    assert files[0].file_pairs("x") == [("a.txt", "/opt/a.txt", 19), ("b.txt", "b.txt", 20)]
    assert set(final.apps["tool"]) == {"appinstall", "apprun", "appenv", "applabels", "apphelp",
                                       "appfiles", "apptest"}
    assert d.arguments == {"VERSION": "1.2", "GREETING": "hello"}


def test_build_args_override_defaults_and_unused_are_reported():
    d = parse(FULL, "full.def", {"VERSION": "9", "EXTRA": "x"})
    assert d.stages[0].get("post").body.strip() == "echo 9 > /version"
    assert d.unused_build_args == ["EXTRA"]


def test_go_template_text_is_left_alone():
    d = parse("Bootstrap: scratch\n%post\n  docker inspect -f '{{.Id}}' x\n", "x.def")
    assert "{{.Id}}" in d.final.get("post").body


@pytest.mark.parametrize("text,line,fragment", [
    ("Bootstrap: busybox\n%post\n  echo {{ NOPE }}\n", 3, "NOPE"),
    ("Bootstrap: busybox\n%psot\n  echo\n", 2, "unknown section %psot"),
    ("From: x\n", 1, "before 'Bootstrap:'"),
    ("Bootstrap: busybox\nFrobnicate: 1\n", 2, "unknown header keyword"),
    ("Bootstrap: busybox\nFrom: a\nFrom: b\n", 3, "duplicate header keyword"),
    ("Bootstrap: nosuch\n", 1, "unknown bootstrap agent"),
    ("Bootstrap: localimage\n", 1, "needs a 'From:'"),
    ("Bootstrap: debootstrap\n", 1, "OSVersion"),
        ("Bootstrap: busybox\n%post -c\nx\n", 2, "%post -c: expected"),
    ("Bootstrap: busybox\n%files from nowhere\n a b\n", 2, "no earlier stage"),
    ("Bootstrap: busybox\n%appinstall\n make\n", 2, "needs an app name"),
    ("Bootstrap: busybox\n%files\n a b c\n", 3, "expected 'SOURCE [DESTINATION]'"),
    ("Bootstrap: busybox\nthis is not a header\n", 2, "expected 'Keyword: value'"),
    ("%arguments\n bad line\nBootstrap: busybox\n", 2, "expected NAME=VALUE"),
    ("# only a comment\n", 1, "no 'Bootstrap:' header"),
])
def test_errors_name_file_line_and_expectation(text, line, fragment):
    with pytest.raises(BuildError) as e:
        parse(text, "my.def")
    assert str(e.value).startswith(f"my.def:{line}: "), str(e.value)
    assert fragment in str(e.value)


def test_reference_definition():
    d = deffile.from_reference("docker-archive", "/x/img.tar")
    assert d.final.bootstrap == "docker-archive" and d.final.header["from"] == "/x/img.tar"


def test_load_reports_unreadable_and_binary(tmp_path):
    with pytest.raises(BuildError, match="cannot read"):
        deffile.load(str(tmp_path / "missing.def"))
    p = tmp_path / "bin.def"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BuildError):
        deffile.load(str(p))


LINE = st.one_of(
    st.sampled_from(["Bootstrap: busybox", "Bootstrap: localimage", "From: x", "Stage: a",
                     "Stage: b", "%post", "%files from a", "%files", "%arguments", "X=1",
                     "%appinstall app", "%apprun", "%post -c", "%files from", "OSVersion:",
                     "{{ X }}", "{{", "}}", "%", "%%", "  a b", "a b c", "Include: a,b",
                     "%labels", "bootstrap: DEBOOTSTRAP", "%test -c /bin/sh", "'unclosed"]),
    st.text(max_size=30))


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=25), st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                    max_size=3))
def test_fuzz_parser_raises_only_hpccont_errors(lines, build_args):
    try:
        d = parse("\n".join(lines), "fuzz.def", build_args)
    except HpccontError:
        return
    for stage in d.stages:           # everything reachable from a parsed file is usable
        for section in stage.sections:
            if section.name in ("files", "appfiles"):
                section.file_pairs("fuzz.def")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_load_arbitrary_bytes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fz") / "f.def"
    p.write_bytes(data)
    try:
        deffile.load(str(p))
    except HpccontError:
        pass


# ---- what Apptainer's parser accepts (its testdata_good corpus, as cases of our own) ----------

def test_comments_after_header_lines_and_continuations():
    d = parse("# before the header\nBootstrap: busybox   # a comment on the header line\n"
              "Stage: one # named\nRegisterURL: https://scc.suse.com\nLibrary: https://lib.example\n"
              "OtherURL12: http://o\nModules: a b\nInclude: curl \\\n  wget\n\n%post\n  true\n")
    h = d.final.header
    assert h["bootstrap"] == "busybox" and h["stage"] == "one"
    assert h["registerurl"] == "https://scc.suse.com" and h["library"] == "https://lib.example"
    assert h["otherurl12"] == "http://o" and h["modules"] == "a b"
    assert d.final.includes() == ["curl", "wget"]


def test_repeated_sections_are_joined():
    """multiplescripts: %setup, %post and %runscript given twice are one section each."""
    d = parse("Bootstrap: busybox\n%setup\n  touch $APPTAINER_ROOTFS/a\n%post\n  echo one\n"
              "%runscript\n  echo Mock!\n\n%setup\n  touch $APPTAINER_ROOTFS/b\n"
              "%post -c /bin/bash\n  echo two\n%runscript\n  exec echo \"$@\"\n"
              "%apprun tool\n  a\n%apprun tool\n  b\n")
    st = d.final
    assert [s.name for s in st.sections].count("post") == 1
    assert st.get("setup").body.split() == ["touch", "$APPTAINER_ROOTFS/a", "touch",
                                            "$APPTAINER_ROOTFS/b"]
    assert st.get("post").body == "  echo one\n  echo two"
    assert st.get("post").interpreter == "/bin/bash"          # the later arguments apply
    assert st.get("runscript").body == '  echo Mock!\n  exec echo "$@"'
    assert st.apps["tool"]["apprun"].body == "  a\n  b"


def test_section_arguments_interpreter_with_arguments_and_comment():
    """sectionargs: '%post -c /bin/bash extra stuff here #comment'; '%post -c /bin/busybox sh'."""
    d = parse("Bootstrap: busybox\n%post -c /bin/bash extra stuff here #comment\n  echo $0\n")
    assert d.final.get("post").interpreter == "/bin/bash extra stuff here"
    assert d.final.get("post").shell_argv() == ["/bin/bash", "extra", "stuff", "here"]
    d = parse("Bootstrap: busybox\n%post -c /bin/busybox sh\n  echo hi\n")
    assert d.final.get("post").shell_argv() == ["/bin/busybox", "sh"]


def test_appstart_and_every_app_section():
    d = parse("Bootstrap: busybox\n%appstart web\n  httpd -f\n%apprun web\n  echo run\n"
              "%appinstall web\n  true\n")
    assert set(d.final.apps["web"]) == {"appstart", "apprun", "appinstall"}
    assert d.final.apps["web"]["appstart"].body == "  httpd -f"


def test_quoted_files_and_comments_between_sections():
    """quotedfiles / noheadercomments: quoted %files paths, comment lines anywhere."""
    d = parse('Bootstrap: busybox\n# c1\n%files\n    "file 1" "with space 1"\n    file2\n'
              '# c2\n%labels\nMaintainer Eduardo\n')
    files = d.final.get("files")
    assert [(a, b) for a, b, _ in files.file_pairs("x")] == [("file 1", "with space 1"),
                                                             ("file2", "file2")]


def test_arguments_are_per_stage():
    """Each stage's %arguments default only that stage's variables (Apptainer reads them per
    build stage); an %arguments above the first stage, and --build-arg, apply to all."""
    text = ("%arguments\n  COMMON=c\nBootstrap: busybox\nStage: a\n%arguments\n  V=first\n"
            "%post\n  echo {{ V }} {{ COMMON }}\nBootstrap: busybox\n%arguments\n  V=second\n"
            "%post\n  echo {{ V }} {{ COMMON }}\n")
    d = parse(text)
    assert [s.get("post").body.strip() for s in d.stages] == ["echo first c", "echo second c"]
    d = parse(text, build_args={"V": "given"})
    assert [s.get("post").body.strip() for s in d.stages] == ["echo given c", "echo given c"]
    with pytest.raises(BuildError, match="ONLY_A"):
        parse("Bootstrap: busybox\n%arguments\n  ONLY_A=1\n%post\n  true\n"
              "Bootstrap: busybox\n%post\n  echo {{ ONLY_A }}\n")
