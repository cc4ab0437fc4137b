"""Site configuration: defaults, validation errors (one line), the JSON cache, config show."""
import json
import os

import pytest

from hpccont import config
from hpccont.errors import ConfigError


def test_shipped_file_documents_every_key_with_its_default():
    import yaml
    shipped = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..",
                                               "site-config", "hpccont.yaml")))
    assert config.validate(shipped) == config.defaults()
    for section, keys in config.SCHEMA.items():
        assert set(shipped[section]) == set(keys), section


@pytest.mark.parametrize("raw,message", [
    ({"bogus": {}}, "unknown section 'bogus'"),
    ({"mounts": {"hom": True}}, "unknown key mounts.hom"),
    ({"mounts": {"home": "yes"}}, "mounts.home must be true or false"),
    ({"mounts": {"binds": "/scratch"}}, "mounts.binds must be a list"),
    ({"runtime": {"rootless": "sometimes"}}, "runtime.rootless must be one of auto, always, never"),
    ({"mounts": []}, "section 'mounts' must be a mapping"),
    ([1, 2], "top level must be a mapping"),
])
def test_validation_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(raw)


def test_load_from_env_and_cache(tmp_path, monkeypatch):
    cfg_file = tmp_path / "site.yaml"
    cfg_file.write_text("mounts:\n  binds: [/scratch]\nimages:\n  allowed_dirs: [/images]\n")
    monkeypatch.setenv("HPCCONT_CONFIG", str(cfg_file))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = config.load()
    assert cfg["mounts"]["binds"] == ["/scratch"] and cfg["images"]["allowed_dirs"] == ["/images"]
    cache = list((tmp_path / "cache" / "hpccont").iterdir())
    assert len(cache) == 1
    assert json.loads(cache[0].read_text())["value"] == cfg
    assert config.load() == cfg               # from the cache
    cfg_file.write_text("mounts:\n  binds: [/other]\n")   # changed file: cache is stale
    assert config.load()["mounts"]["binds"] == ["/other"]
    cache[0].chmod(0o666)                      # a cache others could write is ignored
    stat = cfg_file.stat()
    cache[0].write_text(json.dumps({"stamp": [stat.st_size, stat.st_mtime_ns, stat.st_ino],
                                    "value": {"planted": {}}}))
    assert config.load()["mounts"]["binds"] == ["/other"]


def test_missing_and_broken_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCCONT_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        config.load()
    bad = tmp_path / "bad.yaml"
    bad.write_text("mounts: [unclosed\n")
    monkeypatch.setenv("HPCCONT_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(use_cache=False)
    monkeypatch.delenv("HPCCONT_CONFIG")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    assert config.load() == config.defaults()


@pytest.mark.parametrize("text", ['runtime:\n  rootless: !!int ""\n', "a: !!float ''\n",
                                  "a: !!int 0x\n", "a: !!timestamp 2026-13-45\n"])
def test_tagged_values_pyyaml_cannot_read(tmp_path, text):
    """PyYAML raises IndexError/ValueError from its constructors on such scalars (found by
    tests/fuzz/test_fuzz_config.py): one line, never a traceback."""
    bad = tmp_path / "tagged.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.parse_file(str(bad))


def test_cli_show_and_errors(hpccont, tmp_path):
    r = hpccont("config", "show", "--json", env={"HPCCONT_CONFIG": ""})
    assert r.returncode == 0 and json.loads(r.stdout) == config.defaults()
    bad = tmp_path / "bad.yaml"
    bad.write_text("mounts:\n  home: maybe\n")
    r = hpccont("exec", "/nonexistent.sif", "true", env={"HPCCONT_CONFIG": str(bad)})
    assert r.returncode == 3 and r.stderr.count("\n") == 1
    assert "mounts.home must be true or false" in r.stderr
    r = hpccont("config", "check", str(bad))
    assert r.returncode == 3
    good = tmp_path / "good.yaml"
    good.write_text("runtime:\n  tmp_size: 16m\n")
    r = hpccont("config", "show", env={"HPCCONT_CONFIG": str(good)})
    assert r.returncode == 0 and "tmp_size: 16m" in r.stdout


def test_users_cannot_replace_an_installed_site_config(tmp_path, monkeypatch):
    """The site config is policy: HPCCONT_CONFIG counts for root, or where none is installed."""
    site = tmp_path / "site.yaml"
    site.write_text("mounts:\n  user_binds: false\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("mounts:\n  user_binds: true\n")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(site))
    env = {"HPCCONT_CONFIG": str(mine)}
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    assert config.config_path(env) == str(site)
    assert config.load(env, use_cache=False)["mounts"]["user_binds"] is False
    monkeypatch.setattr(config.os, "geteuid", lambda: 0)
    assert config.config_path(env) == str(mine)
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "not-installed.yaml"))
    assert config.config_path(env) == str(mine)
