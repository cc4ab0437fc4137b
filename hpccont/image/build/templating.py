"""``{{ name }}`` template variables of definition files (Apptainer's %arguments).

Values come from the ``%arguments`` section (defaults) and are overridden by ``--build-arg`` /
``--build-arg-file``.  Substitution is textual and happens before the file is parsed, so a
variable may appear anywhere (header, sections); it never spans lines, so a parse error still
names the right line.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List

from ...errors import BuildError

VAR_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
SECTION_LINE = re.compile(r"^\s*%([A-Za-z]+)\b")
BOOTSTRAP_LINE = re.compile(r"^\s*bootstrap\s*:", re.IGNORECASE)
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass
class Rendered:
    text: str
    values: Dict[str, str]
    unused_build_args: List[str] = field(default_factory=list)


def argument_defaults(lines: List[str], path: str, offset: int = 0) -> Dict[str, str]:
    """KEY=VALUE lines of every %arguments section of ``lines`` (the last definition of a key
    wins); ``offset``: the line index of lines[0] in the file, for messages."""
    values: Dict[str, str] = {}
    inside = False
    for n, raw in enumerate(lines, 1 + offset):
        m = SECTION_LINE.match(raw)
        if m or BOOTSTRAP_LINE.match(raw):
            inside = bool(m) and m.group(1).lower() == "arguments"
            continue
        line = raw.strip()
        if not inside or not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not NAME_RE.match(key):
            raise BuildError(f"{path}:{n}: %arguments: expected NAME=VALUE, got {line!r}")
        values[key] = value.strip()
    return values


def stage_spans(lines: List[str]) -> List[tuple]:
    """(first, end) line indexes of the text before the first Bootstrap line, then of each
    build stage (a stage starts at a Bootstrap line), as Apptainer's parser.All splits a file."""
    starts = [i for i, raw in enumerate(lines) if BOOTSTRAP_LINE.match(raw)]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return [(a, b) for a, b in zip(starts, starts[1:] + [len(lines)]) if a < b] or [(0, 0)]


def render(text: str, path: str, build_args: Dict[str, str]) -> Rendered:
    """Each stage's ``%arguments`` give the defaults of that stage's variables only, as
    Apptainer reads them per build stage; an ``%arguments`` above the first Bootstrap line
    gives defaults to every stage; --build-arg values apply to every stage."""
    lines = text.split("\n")
    used = set()
    out: List[str] = []
    merged: Dict[str, str] = {}
    spans = stage_spans(lines)
    common: Dict[str, str] = {}
    if spans and not BOOTSTRAP_LINE.match(lines[spans[0][0]] if lines else ""):
        common = argument_defaults(lines[spans[0][0]:spans[0][1]], path, offset=spans[0][0])
    for first, end in spans:
        values = dict(common)
        values.update(argument_defaults(lines[first:end], path, offset=first))
        values.update(build_args)
        merged.update(values)
        inside_args = False
        for n in range(first, end):
            raw = lines[n]
            m = SECTION_LINE.match(raw)
            if m or BOOTSTRAP_LINE.match(raw):
                inside_args = bool(m) and m.group(1).lower() == "arguments"
            if inside_args:
                out.append(raw)
                continue
            out.append(_substitute(raw, values, used, f"{path}:{n + 1}"))
    unused = sorted(k for k in build_args if k not in used)
    return Rendered("\n".join(out), merged, unused)


def _substitute(line: str, values: Dict[str, str], used: set, where: str) -> str:
    def one(m: "re.Match") -> str:
        name = m.group(1)
        if name not in values:
            raise BuildError(f"{where}: template variable {{{{ {name} }}}} has no value "
                             f"(define it in %arguments or pass --build-arg {name}=VALUE)")
        used.add(name)
        return values[name]
    # Text like Go templates ('{{.Id}}') is not a variable and stays as written, as in Apptainer.
    return VAR_RE.sub(one, line)
