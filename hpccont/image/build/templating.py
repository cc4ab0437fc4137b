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


def argument_defaults(lines: List[str], path: str) -> Dict[str, str]:
    """KEY=VALUE lines of every %arguments section (the last definition of a key wins)."""
    values: Dict[str, str] = {}
    inside = False
    for n, raw in enumerate(lines, 1):
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


def render(text: str, path: str, build_args: Dict[str, str]) -> Rendered:
    lines = text.split("\n")
    values = argument_defaults(lines, path)
    values.update(build_args)
    used = set()
    out = []
    inside_args = False
    for n, raw in enumerate(lines, 1):
        m = SECTION_LINE.match(raw)
        if m or BOOTSTRAP_LINE.match(raw):
            inside_args = bool(m) and m.group(1).lower() == "arguments"
        if inside_args:
            out.append(raw)
            continue
        out.append(_substitute(raw, values, used, f"{path}:{n}"))
    unused = sorted(k for k in build_args if k not in used)
    return Rendered("\n".join(out), values, unused)


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
