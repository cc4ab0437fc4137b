"""The per-user cache trusts an entry only when it, and its directory, are the caller's own and
no one else can write them; entries carry their key and file stamps carry the ctime."""
import json
import os

import pytest

from hpccont import cache, config


@pytest.fixture
def cachedir(tmp_path, monkeypatch):
    d = tmp_path / "xdg"
    d.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(d))
    return d / "hpccont"


def test_round_trip_and_key(cachedir):
    cache.write("k", "a", [1], {"v": 1})
    assert cache.read("k", "a", [1]) == {"v": 1}
    assert cache.read("k", "a", [2]) is None
    # an entry moved to another key's name is not that key's
    os.rename(cache._path("k", "a"), cache._path("k", "b"))
    assert cache.read("k", "b", [1]) is None


def test_directory_others_can_write_is_not_trusted(cachedir):
    cache.write("k", "a", [1], 1)
    os.chmod(cachedir, 0o777)
    assert cache.read("k", "a", [1]) is None
    os.chmod(cachedir, 0o700)
    assert cache.read("k", "a", [1]) == 1
    os.chown(cachedir, 4242, 4242)                   # someone else's directory
    assert cache.read("k", "a", [1]) is None
    os.chown(cachedir, os.geteuid(), os.getegid())


def test_directory_symlink_is_not_trusted(cachedir, tmp_path):
    cache.write("k", "a", [1], 1)
    os.rename(cachedir, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", cachedir)
    assert cache.read("k", "a", [1]) is None


def test_entry_others_can_write_is_not_trusted(cachedir):
    cache.write("k", "a", [1], 1)
    os.chmod(cache._path("k", "a"), 0o666)
    assert cache.read("k", "a", [1]) is None


def test_file_stamp_has_ctime(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"aaaa")
    before = cache.file_stamp(str(f))
    st = os.stat(f)
    with open(f, "r+b") as out:
        out.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = cache.file_stamp(str(f))
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns and before != after


def test_config_rewritten_with_mtime_restored_is_read_again(cachedir, tmp_path, monkeypatch):
    site = tmp_path / "site.yaml"
    site.write_text("mounts:\n  user_binds: false\n")
    monkeypatch.setenv("HPCCONT_CONFIG", str(site))
    assert config.load()["mounts"]["user_binds"] is False
    st = os.stat(site)
    site.write_text("mounts:\n  user_binds: true \n")        # same size
    os.utime(site, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert config.load()["mounts"]["user_binds"] is True
    entry = json.loads(open(cache._path("config", str(site))).read())
    assert entry["key"] == str(site)


@pytest.mark.parametrize("value", [
    {"runtime": {"prefetch": True, "overlay": "kernel"}, "mounts": {"binds": ["/a:/b:ro"]}},
    [1, -2.5, 3e10, None, False, "é\n\t\"\\", [], {}],
    float("inf"), "", 0,
])
def test_entries_read_back_as_json_reads_them(cachedir, value):
    """cache.loads (the C scanner without the json package) agrees with json.loads."""
    text = json.dumps(value)
    assert cache.loads(text) == json.loads(text)
    assert cache.loads(f" \n{text}\n") == json.loads(text)
    cache.write("k", "v", [1], value)
    assert cache.read("k", "v", [1]) == value


@pytest.mark.parametrize("text", ["", " ", "{", '{"a": 1} x', "nul", "[1,]", '{"a" 1}', '"\x01"',
                                  '{"a": 1}{"b": 2}'])
def test_damaged_entries_are_misses(cachedir, text):
    with pytest.raises(ValueError):
        cache.loads(text)
    cache.write("k", "d", [1], 1)
    with open(cache._path("k", "d"), "w") as f:
        f.write(text)
    assert cache.read("k", "d", [1]) is None
