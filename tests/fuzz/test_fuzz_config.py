"""Fuzzing the site-config loader: the YAML file as an admin edits it (site-config/hpccont.yaml
damaged with YAML syntax spliced in: anchors, tags, flow collections, odd scalars, tabs), raw
bytes, and the per-user cached copy that ``config.load`` reads instead of the YAML when the
stamp matches (the user can write it: whatever it holds must not crash a launch).

Allowed outcomes: a config with every section and every key of the schema's type, or
ConfigError naming the file.
"""
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helpers  # noqa: E402
from fuzzlib import (MemFile, Outcomes, fuzz_settings, kind, mutate, mutate_text,  # noqa: E402
                     outcome)

from hpccont import cache, config  # noqa: E402

# The shipped file without its comments (the parser's cost grows with the text; comments are
# the cheapest part to leave out).
SITE = "\n".join(line.split(" #")[0].rstrip() for line in
                 (helpers.REPO / "site-config" / "hpccont.yaml").read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#"))
SEEDS = [SITE,
         "mounts:\n  binds: [/scratch, '/apps:/opt/apps:ro']\n  user_binds: false\n"
         "runtime:\n  rootless: always\n  share_idle_s: 30\n  tmp_size: 1g\n"
         "signatures:\n  require: true\n  keyring: [/etc/hpccont/site.pem]\n",
         "images:\n  allowed_dirs:\n    - /images\n    - /scratch/images\nbuild: {compression: xz,"
         " compression_level: 0}\nmpi: {default_mode: bind, installations: [/usr/lib/openmpi]}\n",
         "runtime: &r\n  prefetch: false\nnvidia:\n  always: yes\n"]
TOKENS = [":", ": ", "- ", "-", "[", "]", "{", "}", ",", "&a ", "*a", "<<: *a", "!!str ",
          "!!int ", "!!binary ", "!!python/object:os.system ", "!!set ", "? ", "|", ">", "'",
          '"', "\\", "#", "\t", "  ", "    ", "---", "...", "%YAML 1.1", "~", "null", "yes",
          "no", "on", "off", "True", "1e999", "-1", "0x1F", "0o17", "1_000", ".inf", ".nan",
          "2001-02-30", "2001-12-14t21:59:43.10-05:00", "12:30:00", "=", "\x00", "\ufeff",
          "\x85", "\u2028", "é", "binds", "mounts:", "runtime:", "share_idle_s: ", "rootless: ",
          "keyring: ", "[[[[[[[[", "{a: {b: {c: "]
TYPES = {list: list, bool: bool, int: int, str: str}


def check_config(cfg) -> None:
    assert isinstance(cfg, dict) and set(cfg) == set(config.SCHEMA), cfg
    for sec, keys in config.SCHEMA.items():
        assert set(cfg[sec]) == set(keys), (sec, cfg[sec])
        for key, (typ, _) in keys.items():
            value = cfg[sec][key]
            assert isinstance(value, TYPES.get(typ, object)), (sec, key, value)
            if typ is int:
                assert not isinstance(value, bool) and value >= 0
            if typ is list:
                assert all(isinstance(v, (str, dict)) for v in value)
            choices = config.CHOICES.get((sec, key))
            assert not choices or value in choices, (sec, key, value)


def parse(path: str):
    check_config(config.parse_file(path))
    return "config"


def load(environ: dict):
    check_config(config.load(environ))
    return "config"


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(d))
    return d


def test_fuzz_site_config(tmp_path, cache_home):
    seen = Outcomes()
    f = MemFile("hpccont.yaml")
    good = tmp_path / "good.yaml"
    good.write_text(SEEDS[1])
    environ = {"HPCCONT_CONFIG": str(good)}
    config.load(environ)                      # writes the cached copy whose stamp matches
    entry = next(cache_home.glob("hpccont/config-*.json"))
    cached = entry.read_bytes()

    @fuzz_settings()
    @given(st.binary(min_size=1, max_size=48))
    def one(case):
        choice, tape = case[0] % 8, case[1:]
        if choice == 7:
            f.load(tape)
        elif choice == 6:                     # the user's cached copy, its stamp intact
            entry.write_bytes(_damage_cache(cached, tape))
            seen.add(kind(outcome(load, environ)))
            return
        else:
            # the whole shipped file costs the YAML parser 5 times a small one: 1 in 16
            seed = SEEDS[0] if choice == 0 and case[0] % 16 == 0 else SEEDS[1 + choice % 3]
            f.load(mutate_text(seed, tape, TOKENS).encode("utf-8", "surrogateescape"))
        seen.add(kind(outcome(parse, f.path)))

    one()
    seen.check_volume()
    assert seen.counts.get("config") and seen.counts.get("ConfigError"), seen.counts
    print(f"site config: {seen.total} inputs: {seen.counts}")


def _damage_cache(cached: bytes, tape: bytes) -> bytes:
    """The cached entry with its value replaced or its bytes damaged (stamp and key kept
    where the damage spares them)."""
    doc = json.loads(cached)
    pick = tape[0] % 6 if tape else 0
    values = [None, [], "x", {"mounts": None}, {**doc["value"], "runtime": {"share": 1}},
              {k: dict(v, extra=1) for k, v in doc["value"].items()}]
    if pick < 4 and len(tape) > 1:
        doc["value"] = values[tape[1] % len(values)]
        return json.dumps(doc).encode()
    return mutate(cached, tape[1:])


def test_invalid_dates_and_bad_text_are_config_errors(tmp_path):
    """YAML scalars that look like dates but are not, and files that are not UTF-8."""
    for name, data in (("date", b"runtime:\n  tmp_size: 2001-02-30\n"),
                       ("latin1", b"runtime:\n  tmp_size: \xe9\n"),
                       ("deep", b"mounts:\n  binds: " + b"[" * 5000 + b"\n")):
        p = tmp_path / f"{name}.yaml"
        p.write_bytes(data)
        result = outcome(parse, str(p))
        assert kind(result) == "ConfigError", (name, result)
        assert str(p) in str(result)


def test_damaged_cached_config_is_recomputed(tmp_path, cache_home):
    good = tmp_path / "good.yaml"
    good.write_text(SEEDS[1])
    environ = {"HPCCONT_CONFIG": str(good)}
    want = config.load(environ)
    entry = next(cache_home.glob("hpccont/config-*.json"))
    doc = json.loads(entry.read_text())
    doc["value"] = {"mounts": None}
    entry.write_text(json.dumps(doc))
    os.chmod(entry, 0o600)
    assert config.load(environ) == want
