"""Definition files in Apptainer's syntax: header keywords, sections, SCIF apps, stages.

A file is a list of stages; each stage starts with a ``Bootstrap:`` line, then ``Keyword: value``
header lines, then ``%section [args]`` blocks.  ``%arguments`` and ``{{ var }}`` templating are
resolved first (templating.py).  Every error names file:line and what was expected.

A file without any ``Bootstrap:`` line (only comments or blank lines before its first %section)
is one header-less stage, as Apptainer's parser reads it (its header is nil): the sections
alone, to be applied to an image that already exists (``hpccont build --update SANDBOX``).
"""
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ...errors import BuildError
from . import templating

# Sections of a stage, and which take an app name.
SECTIONS = ("arguments", "setup", "files", "post", "environment", "runscript", "startscript",
            "test", "labels", "help")
APP_SECTIONS = ("appinstall", "apprun", "appenv", "applabels", "apphelp", "appfiles", "apptest",
                "appstart")
# Sections that are shell scripts and accept ``-c INTERPRETER [ARGS]``.
SCRIPT_SECTIONS = ("setup", "post", "test", "runscript", "startscript", "appinstall", "apprun",
                   "apptest", "appstart")
REPEATABLE = ("files", "appfiles")

# Header keywords: the ones the builder uses, and ones Apptainer agents use that are accepted so
# that existing files parse (they only matter to agents hpccont does not have).
HEADER_KEYS = ("bootstrap", "from", "osversion", "mirrorurl", "include", "stage")
ACCEPTED_KEYS = ("fingerprints", "registry", "namespace", "updateurl", "includecmd", "confurl",
                 "setopt", "product", "user", "regcode", "productpgp", "registerurl", "library",
                 "modules", "auth", "nohttps", "keyserver", "exclude", "arch")
OTHERURL_RE = re.compile(r"^otherurl\d+$")    # Apptainer's "otherurl&n"

# Agents that exist here, and registry agents that are recognised but need the network.
BOOTSTRAP_AGENTS = ("busybox", "scratch", "localimage", "docker-archive", "oci-archive", "oci",
                    "debootstrap", "docker", "oras")
NETWORK_AGENTS = ("library", "shub", "yum", "zypper", "dnf", "arch", "docker-daemon")
NEEDS_FROM = ("localimage", "docker-archive", "oci-archive", "oci", "docker", "oras")

SECTION_RE = re.compile(r"^\s*%([A-Za-z]+)(?:[ \t]+(.*?))?\s*$")
BOOTSTRAP_RE = re.compile(r"^\s*bootstrap\s*:", re.IGNORECASE)
HEADER_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(.*?)\s*$")
STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
APP_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Section:
    name: str
    line: int
    body: str = ""
    args: str = ""
    app: Optional[str] = None
    from_stage: Optional[str] = None       # %files from STAGE
    interpreter: Optional[str] = None      # -c /bin/bash, -c "/bin/busybox sh"

    def shell_argv(self) -> List[str]:
        """The interpreter with its arguments (default /bin/sh)."""
        return (self.interpreter or "/bin/sh").split()

    def file_pairs(self, path: str) -> List[tuple]:
        """(src, dst, line) of a %files/%appfiles body; dst defaults to src."""
        pairs = []
        for i, raw in enumerate(self.body.split("\n")):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line)
            except ValueError as e:
                raise BuildError(f"{path}:{self.line + 1 + i}: %{self.name}: {e}") from None
            if len(words) > 2:
                raise BuildError(f"{path}:{self.line + 1 + i}: %{self.name}: expected "
                                 f"'SOURCE [DESTINATION]', got {line!r}")
            pairs.append((words[0], words[-1], self.line + 1 + i))
        return pairs


@dataclass
class Stage:
    index: int
    line: int
    header: Dict[str, str] = field(default_factory=dict)
    header_lines: Dict[str, int] = field(default_factory=dict)
    sections: List[Section] = field(default_factory=list)
    apps: Dict[str, Dict[str, Section]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.header.get("stage") or f"stage-{self.index}"

    @property
    def bootstrap(self) -> str:
        """The agent; "" for a header-less stage (sections only)."""
        return self.header.get("bootstrap", "").lower()

    @property
    def headerless(self) -> bool:
        return "bootstrap" not in self.header

    def get(self, name: str) -> Optional[Section]:
        return next((s for s in self.sections if s.name == name), None)

    def all(self, name: str) -> List[Section]:
        return [s for s in self.sections if s.name == name]

    def includes(self) -> List[str]:
        return [w for w in re.split(r"[\s,]+", self.header.get("include", "")) if w]


@dataclass
class Definition:
    path: str
    text: str                     # after templating: what goes into the image's deffile object
    stages: List[Stage]
    arguments: Dict[str, str] = field(default_factory=dict)
    unused_build_args: List[str] = field(default_factory=list)

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(text: str, path: str = "<definition>", build_args: Optional[Dict[str, str]] = None
          ) -> Definition:
    if "\x00" in text:
        raise BuildError(f"{path}: not a text file (contains NUL bytes)")
    rendered = templating.render(text, path, dict(build_args or {}))
    stages = _Parser(path).run(rendered.text.split("\n"))
    return Definition(path, rendered.text, stages, rendered.values, rendered.unused_build_args)


def load(path: str, build_args: Optional[Dict[str, str]] = None) -> Definition:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BuildError(f"{path}: cannot read definition file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BuildError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse(text, path, build_args)


def from_reference(agent: str, ref: str) -> Definition:
    """The definition ``hpccont build OUT docker-archive:FILE`` stands for."""
    stage = Stage(index=1, line=1, header={"bootstrap": agent, "from": ref},
                  header_lines={"bootstrap": 1, "from": 2})
    text = f"Bootstrap: {agent}\nFrom: {ref}\n"
    return Definition(f"{agent}:{ref}", text, [stage])


def _continued(value: str) -> str:
    """A header value continued on the next line: the backslash goes, and a ``\\n`` just
    before it is a newline (Apptainer's multi-line values, e.g. a ProductPGP key block)."""
    value = value[:-1]
    return value[:-2] + "\n" if value.endswith("\\n") else value


class _Parser:
    def __init__(self, path: str):
        self.path = path
        self.stages: List[Stage] = []
        self.section: Optional[Section] = None
        self.body: List[str] = []
        self.seen_arguments = False
        self.continued = None       # (stage, key) of a header value ending in a backslash

    def fail(self, n: int, message: str) -> BuildError:
        return BuildError(f"{self.path}:{n}: {message}")

    def run(self, lines: List[str]) -> List[Stage]:
        # No Bootstrap line anywhere: the sections form one stage without a header.  With one,
        # sections above it belong to no stage (Apptainer: every stage needs a header).
        self.headerless = not any(BOOTSTRAP_RE.match(raw) for raw in lines)
        for n, raw in enumerate(lines, 1):
            if BOOTSTRAP_RE.match(raw):
                self.close_section()
                # a Bootstrap line starts a stage even after a header value ending in '\'
                # (Apptainer splits stages first): it never continues the previous stage
                self.continued = None
                self.stages.append(Stage(index=len(self.stages) + 1, line=n))
                self.header_line(n, raw)
            elif SECTION_RE.match(raw) and self.is_section(raw):
                self.close_section()
                self.open_section(n, raw)
            elif self.section is not None:
                self.body.append(raw)
            else:
                self.header_line(n, raw)
        self.close_section()
        if not self.stages:
            raise self.fail(1, "empty definition file: no 'Bootstrap:' header and no %section "
                            "(expected e.g. 'Bootstrap: docker-archive' and 'From: image.tar')")
        for stage in self.stages:
            self.check_stage(stage)
        return self.stages

    @staticmethod
    def is_section(raw: str) -> bool:
        # '%' lines inside scripts (printf formats, '%%') are only sections if the word is one.
        word = SECTION_RE.match(raw).group(1).lower()
        return word in SECTIONS or word in APP_SECTIONS or raw.lstrip() == raw

    def header_line(self, n: int, raw: str) -> None:
        line = raw.strip()
        if not line or line.startswith("#"):
            self.continued = None
            return
        raw = raw.split("#", 1)[0]      # a comment after a header line, as Apptainer trims it
        if self.continued is not None:
            stage, key = self.continued
            self.continued = None
            value = stage.header[key] + raw.strip()
            if value.endswith("\\"):
                self.continued = (stage, key)
                value = _continued(value)
            stage.header[key] = value
            return
        m = HEADER_RE.match(raw)
        if not m:
            raise self.fail(n, f"expected 'Keyword: value' header line or a %section, got {line[:60]!r}")
        key, value = m.group(1).lower(), m.group(2)
        if not self.stages:
            raise self.fail(n, f"header keyword {m.group(1)!r} before 'Bootstrap:' "
                            "(a stage starts with 'Bootstrap: AGENT')")
        stage = self.stages[-1]
        if key not in HEADER_KEYS and key not in ACCEPTED_KEYS and not OTHERURL_RE.match(key):
            raise self.fail(n, f"unknown header keyword {m.group(1)!r} (expected one of "
                            f"{', '.join(k.capitalize() for k in HEADER_KEYS)})")
        if key in stage.header:
            raise self.fail(n, f"duplicate header keyword {m.group(1)!r} "
                            f"(first on line {stage.header_lines[key]})")
        if value.endswith("\\"):        # continued on the next line
            value = _continued(value)
            self.continued = (stage, key)
        elif not value and key in HEADER_KEYS:
            raise self.fail(n, f"header keyword {m.group(1)!r} needs a value")
        stage.header[key] = value
        stage.header_lines[key] = n

    def open_section(self, n: int, raw: str) -> None:
        m = SECTION_RE.match(raw)
        name, args = m.group(1).lower(), (m.group(2) or "")
        if name not in SECTIONS and name not in APP_SECTIONS:
            raise self.fail(n, f"unknown section %{m.group(1)} (expected one of "
                            f"{', '.join('%' + s for s in SECTIONS + APP_SECTIONS)})")
        if name == "arguments":
            self.section = Section(name, n, args=args)   # consumed by templating; kept for order
            return
        if not self.stages and self.headerless:
            self.stages.append(Stage(index=1, line=n))
        if not self.stages:
            raise self.fail(n, f"section %{name} before the first 'Bootstrap:' header (every "
                            "stage of a file with several needs its own header)")
        args = args.split("#", 1)[0].strip()    # a trailing comment, as Apptainer trims it
        section = Section(name, n, args=args)
        words = self.split_args(n, args)
        if name in APP_SECTIONS:
            if not words or not APP_NAME_RE.match(words[0]):
                raise self.fail(n, f"%{name} needs an app name (e.g. '%{name} myapp')")
            section.app, words = words[0], words[1:]
        if name in ("files", "appfiles") and words[:1] == ["from"]:
            if len(words) != 2:
                raise self.fail(n, f"%{name} from: expected '%{name} from STAGE'")
            section.from_stage, words = words[1], []
        if name in SCRIPT_SECTIONS and words[:1] == ["-c"]:
            # everything after -c is the interpreter and its arguments (Apptainer runs
            # "/bin/sh -c 'SHELL ARGS SCRIPT'"), e.g. '%post -c /bin/busybox sh'
            if len(words) < 2 or not words[1].startswith("/"):
                raise self.fail(n, f"%{name} -c: expected '%{name} -c /path/to/shell [ARGS]'")
            section.interpreter, words = " ".join(words[1:]), []
        if words:
            raise self.fail(n, f"%{name}: unexpected arguments {' '.join(words)!r}")
        self.section = section

    def split_args(self, n: int, args: str) -> List[str]:
        try:
            return shlex.split(args)
        except ValueError as e:
            raise self.fail(n, f"section arguments: {e}") from None

    def close_section(self) -> None:
        section, self.section = self.section, None
        if section is None:
            return
        body, self.body = self.body, []
        if section.name == "arguments":
            return
        section.body = "\n".join(body).rstrip("\n")
        stage = self.stages[-1]
        if section.name not in REPEATABLE:
            # A section given twice is one section, the bodies joined in order (Apptainer's
            # parser appends them); the later arguments (-c SHELL) apply.
            if section.app is not None:
                first = stage.apps.get(section.app, {}).get(section.name)
            else:
                first = stage.get(section.name)
            if first is not None:
                first.body = "\n".join(b for b in (first.body, section.body) if b)
                if section.args:
                    first.args, first.interpreter = section.args, section.interpreter
                return
        if section.app is not None:
            stage.apps.setdefault(section.app, {}).setdefault(section.name, section)
        stage.sections.append(section)

    def check_stage(self, stage: Stage) -> None:
        if stage.headerless:
            self.check_sections(stage, set())
            return
        n = stage.header_lines.get("bootstrap", stage.line)
        agent = stage.bootstrap
        if agent not in BOOTSTRAP_AGENTS and agent not in NETWORK_AGENTS:
            raise self.fail(n, f"unknown bootstrap agent {stage.header['bootstrap']!r} "
                            f"(expected one of {', '.join(BOOTSTRAP_AGENTS)})")
        if agent in NEEDS_FROM and not stage.header.get("from"):
            raise self.fail(n, f"'Bootstrap: {agent}' needs a 'From:' line")
        if agent == "debootstrap" and not stage.header.get("osversion"):
            raise self.fail(n, "'Bootstrap: debootstrap' needs an 'OSVersion:' line (e.g. bookworm)")
        name = stage.header.get("stage")
        if name is not None and not STAGE_NAME_RE.match(name):
            raise self.fail(stage.header_lines["stage"], f"bad stage name {name!r}")
        earlier = {s.name for s in self.stages[:stage.index - 1]}
        if name is not None and name in earlier:
            raise self.fail(stage.header_lines["stage"], f"duplicate stage name {name!r}")
        self.check_sections(stage, earlier)

    def check_sections(self, stage: Stage, earlier: set) -> None:
        for section in stage.sections:
            if section.from_stage is not None and section.from_stage not in earlier:
                raise self.fail(section.line, f"%{section.name} from {section.from_stage}: no "
                                "earlier stage of that name (expected a 'Stage:' name above)")
        for section in stage.sections:
            if section.name in ("files", "appfiles"):
                section.file_pairs(self.path)
