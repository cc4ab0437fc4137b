"""Fuzzing the module template filling: generated help, labels and paths through real lua5.3
and tclsh, with stand-ins for the module commands.

hypothesis draws each image's help, labels and file name (one binary "tape", decoded here)
from the tokens that end Lua long strings, Tcl words and braces, placeholders and arbitrary
text; the modulefiles are then evaluated in batches by one interpreter run each, in an
environment that holds only the module commands, and must give back exactly the help and
whatis text the generator meant to show.
EXAMPLES inputs per flavour (10,000 by default; the long run:
``HPCCONT_FUZZ_EXAMPLES=200000 pytest tests/lmod/test_fill_fuzz.py``).
"""
import os
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hpccont.modules.generate import help_text, make_spec, render_modulefile, whatis_lines
from hpccont.modules.metadata import Command, ImageMetadata

EXAMPLES = int(os.environ.get("HPCCONT_FUZZ_EXAMPLES", "10000"))

TOKENS = ["]]", "]=]", "]==]", "]===]", "]====]", "[[", "[=[", "[===[", "]", "[", "=", "{", "}",
          "$", "\\", "\"", "'", "\n", "\r", "\t", "\x00", "\x1b", ";", "#", "--", "@@",
          "@@WHATIS@@", "@@HELP@@", "@@IMAGE@@", "@@STAMP@@", "@@NOPE@@", "os.execute('x')",
          "[exec x]", "$env(HOME)", "\\\n", "]=== ", "]===\n", " "]
# Characters between the tokens: printable ASCII, and text that is awkward in other ways.
OTHER = [chr(c) for c in range(32, 127)] + ["é", "\u2028", "\ufeff", "\U0001f600", "\x85",
                                           "\u0301", "\x7f", "\x01"]


def hostile(tape: bytes) -> str:
    """Text from a tape: each byte one of TOKENS or, past them, one of OTHER (drawing one binary
    and decoding it costs hypothesis a tenth of drawing lists of text: 10,000 cases in seconds)."""
    return "".join(TOKENS[b] if b < len(TOKENS) else OTHER[(b - len(TOKENS)) % len(OTHER)]
                   for b in tape)


def image_case_of(tape: bytes) -> tuple:
    """(help, labels, file name) from one tape: its first byte says how many labels, the next
    ones the size of each field (help, file name, each label's key and value)."""
    labels = tape[0] % 4 if tape else 0
    sizes = [3 + b % 10 for b in tape[1:3 + 2 * labels]]
    body, pos, fields = tape[3 + 2 * labels:], 0, []
    for size in sizes:
        fields.append(hostile(body[pos:pos + size]))
        pos += size
    fields += [""] * (2 + 2 * labels - len(fields))
    return fields[0], dict(zip(fields[2::2], fields[3::2])), fields[1]


image_case = st.binary(min_size=24, max_size=72).map(image_case_of)


def spec_for(help_text_, labels, path, tcl):
    meta = ImageMetadata("/images/" + path, "sandbox", labels=labels, help=help_text_)
    return make_spec("fuzz/1", meta, commands=[Command("cat", "cat")], tcl=tcl,
                     hpccont="/usr/bin/hpccont", container_exec="/usr/bin/container-exec",
                     digest="sha256:0")


LUA_DRIVER = r"""
local dir, n = arg[1], tonumber(arg[2])
for i = 1, n do
  local calls, helps, whatis = {}, {}, {}
  local env = {
    help = function(s) helps[#helps + 1] = s end,
    whatis = function(s) whatis[#whatis + 1] = s end,
    family = function() end, setenv = function() end, prepend_path = function() end,
    pathJoin = function(a, b) return a .. "/" .. b end, isFile = function() return false end,
    os = {getenv = function() return nil end},
  }
  local chunk, err = loadfile(dir .. "/" .. i .. ".lua", "t", env)
  local out = io.open(dir .. "/" .. i .. ".out", "wb")
  if not chunk then out:write("SYNTAX " .. err) else
    local ok, e = pcall(chunk)
    if not ok then out:write("ERROR " .. tostring(e)) else
      out:write(#helps, "\0", helps[1] or "", "\0", table.concat(whatis, "\1")) end
  end
  out:close()
end
"""

# Runs each modulefile in a child interpreter whose only commands are the module commands
# (as tcl2lua.tcl does, but safe: an injected exec would fail), then its help procedure.
TCL_DRIVER = r"""
set dir [lindex $argv 0]; set n [lindex $argv 1]
for {set i 1} {$i <= $n} {incr i} {
  set c [interp create -safe]
  set ::whatis {}; set ::help {}
  proc w_whatis {args} { lappend ::whatis [join $args " "] }
  proc w_puts {args} { append ::help [lindex $args end] }
  proc w_nop {args} { return "" }
  proc w_mode {args} { return 0 }
  proc w_file {sub args} { if {$sub eq "isfile"} { return 0 }; return [join $args /] }
  interp alias $c module-whatis {} w_whatis
  interp alias $c puts {} w_puts
  foreach cmd {family setenv prepend-path} { interp alias $c $cmd {} w_nop }
  interp alias $c file {} w_file
  interp alias $c module-info {} w_mode
  set f [open "$dir/$i.tcl" rb]; fconfigure $f -encoding utf-8; set text [read $f]; close $f
  set out [open "$dir/$i.out" wb]; fconfigure $out -encoding utf-8
  if {[catch {interp eval $c $text} err]} { puts -nonewline $out "ERROR $err" } else {
    if {[catch {interp eval $c ModulesHelp} err]} { puts -nonewline $out "ERROR $err" } else {
      puts -nonewline $out "1\0$::help\0[join $::whatis \1]" }
  }
  close $out
  interp delete $c
}
"""


def run_batch(tmp, cases, tcl):
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    expected = []
    for i, case in enumerate(cases, 1):
        spec = spec_for(*case, tcl=tcl)
        text = render_modulefile(spec, "/m/.hpccont/fuzz/1/bin")
        (tmp / f"{i}.{'tcl' if tcl else 'lua'}").write_text(text, encoding="utf-8")
        expected.append((help_text(spec), whatis_lines(spec)))
    if tcl:
        driver = tmp / "driver.tcl"
        driver.write_text(TCL_DRIVER)
        argv = ["tclsh", str(driver), str(tmp), str(len(cases))]
    else:
        driver = tmp / "driver.lua"
        driver.write_text(LUA_DRIVER)
        argv = ["lua5.3", str(driver), str(tmp), str(len(cases))]
    r = subprocess.run(argv, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for i, (want_help, want_whatis) in enumerate(expected, 1):
        got = (tmp / f"{i}.out").read_bytes().decode("utf-8")
        assert not got.startswith(("SYNTAX", "ERROR")), (cases[i - 1], got)
        count, helptext, whatis = got.split("\0")
        assert count == "1"
        if tcl:
            # what tcl2lua would wrap in [===[ ]===]: never closed early
            want_help = re.sub(r"\]===(?=\]|\s*\Z)", "] ===", want_help)
            want_whatis = [re.sub(r"\]===(?=\]|\s*\Z)", "] ===", w) for w in want_whatis]
            assert "]===]" not in helptext and not helptext.rstrip().endswith("]===")
        assert helptext == want_help, cases[i - 1]
        assert whatis.split("\1") == want_whatis, cases[i - 1]


needs = pytest.mark.skipif(not (shutil.which("lua5.3") and shutil.which("tclsh")),
                           reason="lua5.3 and tclsh (Debian packages lua5.3, tcl)")


@needs
@pytest.mark.parametrize("flavour", ["lua", "tcl"])
def test_fuzz_template_filling(tmp_path, flavour):
    """hypothesis draws the values (fast, in-process); the interpreter then runs them all."""
    cases = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(image_case)
    def collect(case):
        spec_for(*case, tcl=flavour == "tcl")      # generation itself must not fail
        cases.append(case)

    collect()
    assert len(cases) >= EXAMPLES * 0.9             # hypothesis may stop early on exhaustion
    for start in range(0, len(cases), 2000):
        run_batch(tmp_path / "batch", cases[start:start + 2000], flavour == "tcl")


@needs
def test_known_breakers_round_trip(tmp_path):
    cases = [("@@WHATIS@@ ]] ]=] ]===]", {"org.opencontainers.image.description": "]]"}, "a]]b"),
             ("} { \\ $x [y]", {"k}": "v{"}, "p $x"), ("]===", {}, "]==="),
             ("x\r\ny\x1b[31m", {"d": "\x00"}, "n\nl")]
    run_batch(tmp_path / "l", cases, False)
    run_batch(tmp_path / "t", cases, True)
