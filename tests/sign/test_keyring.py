"""The local keyring (``hpccont key newpair|list|import|export|remove``, OpenPGP through gpg and
PEM), OpenPGP signing, and ``verify --sif-id --group-id --all --json`` with the signer's entity
and fingerprint printed as ``apptainer verify`` prints them."""
import json
import os
import shutil
import subprocess

import pytest

from hpccont.image import sif

NAME, EMAIL, COMMENT = "Test Signer", "signer@example.org", "ci"
UID = f"{NAME} ({COMMENT}) <{EMAIL}>"


@pytest.fixture
def keys(tmp_path):
    return {"HPCCONT_KEYS": str(tmp_path / "keys")}


@pytest.fixture
def run(hpccont, keys):
    def go(*args, env=None, ok=True):
        r = hpccont(*args, env=dict(keys, **(env or {})))
        if ok:
            assert r.returncode == 0, r.stderr
        return r
    return go


@pytest.fixture
def image(busybox_sif, tmp_path):
    dst = tmp_path / "img.sif"
    shutil.copyfile(busybox_sif, dst)
    return dst


@pytest.fixture
def pgp_key(run):
    r = run("key", "newpair", "--name", NAME, "--email", EMAIL, "--comment", COMMENT)
    fpr = r.stdout.split()[2]
    assert len(fpr) == 40
    return fpr


def _agents(home):
    out = subprocess.run(["pgrep", "-af", "gpg-agent"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(home) in line]


def test_newpair_and_list(run, pgp_key, keys):
    r = run("key", "list")
    assert f"0) U: {UID}" in r.stdout and f"F: {pgp_key}" in r.stdout
    listed = json.loads(run("key", "list", "--json").stdout)
    assert [k["fingerprint"] for k in listed] == [pgp_key] and listed[0]["uids"] == [UID]
    assert json.loads(run("key", "list", "--secret", "--json").stdout)[0]["secret"] is True
    assert oct(os.stat(keys["HPCCONT_KEYS"]).st_mode & 0o777) == "0o700"
    assert not _agents(keys["HPCCONT_KEYS"])        # gpg-agent stopped after each use


def test_pgp_sign_and_verify_like_apptainer(run, pgp_key, image):
    r = run("sign", image)
    assert "pgp" in r.stdout.lower() or pgp_key in r.stdout
    d = sif.read_sif(str(image)).find(sif.DATA_SIGNATURE)[0]
    assert d.entity_fingerprint == pgp_key.lower() and d.linked_to_group and d.linked_id == 1
    r = run("verify", image)
    lines = r.stdout.splitlines()
    assert f"[LOCAL]   Signing entity: {UID}" in lines
    assert f"[LOCAL]   Fingerprint: {pgp_key}" in lines
    assert "ID  |GROUP   |LINK    |TYPE" in lines
    assert any(line.startswith("1   |1       |NONE    |") for line in lines)
    assert lines[-1] == f"Container verified: {image}"
    out = json.loads(run("verify", "--json", image).stdout)
    assert out["Signatures"] == 1 and out["verified"] is True
    signer = out["SignerKeys"][0]["Signer"]
    assert signer["Fingerprint"] == pgp_key.lower() and signer["Name"] == UID
    assert signer["KeyLocal"] and signer["KeyCheck"] and signer["DataCheck"]
    assert {s["Signer"]["Partition"] for s in out["SignerKeys"]} >= {"FS"}


def test_export_remove_import(run, pgp_key, image, tmp_path):
    run("sign", image)
    pub = tmp_path / "pub.asc"
    run("key", "export", pgp_key, pub)
    assert b"BEGIN PGP PUBLIC KEY BLOCK" in pub.read_bytes()
    sec = tmp_path / "sec.asc"
    run("key", "export", "--secret", pgp_key[-16:], sec)
    assert b"PRIVATE KEY BLOCK" in sec.read_bytes() and oct(sec.stat().st_mode & 0o777) == "0o600"
    r = run("key", "export", pgp_key, pub, ok=False)
    assert r.returncode != 0 and "exists" in r.stderr
    run("key", "remove", pgp_key)
    assert json.loads(run("key", "list", "--json").stdout) == []
    r = run("verify", image, ok=False)
    assert r.returncode == 4 and "no keys to verify with" in r.stderr
    r = run("verify", "--key", pub, image)                 # a key file works without keyring
    assert f"Fingerprint: {pgp_key}" in r.stdout
    run("key", "import", pub)
    assert f"F: {pgp_key}" in run("key", "list").stdout
    run("verify", image)
    # a second keyring gets the secret key and signs with it
    other = {"HPCCONT_KEYS": str(tmp_path / "other")}
    run("key", "import", sec, env=other)
    img2 = tmp_path / "img2.sif"
    shutil.copyfile(image, img2)
    run("sign", "--keyidx", "0", img2, env=other)
    assert len(sif.read_sif(str(img2)).find(sif.DATA_SIGNATURE)) == 2
    run("verify", img2, env=other)


def test_pem_keys_in_the_keyring(run, image, tmp_path):
    run("key", "newpair", "--out", tmp_path / "site")
    run("sign", "--key", tmp_path / "site.pem", image)
    r = run("verify", image, ok=False)
    assert "no keys to verify with" in r.stderr
    r = run("key", "import", tmp_path / "site.pub.pem")
    keyid = r.stdout.split()[3]
    assert keyid.startswith("SHA256:")
    assert f"F: {keyid}" in run("key", "list").stdout
    r = run("verify", image)
    assert "ED25519" in r.stdout and "Container verified" in r.stdout
    run("key", "remove", keyid)
    assert run("verify", image, ok=False).returncode == 4
    # a private PEM key imported signs by --key still; the keyring keeps it 0600
    run("key", "import", tmp_path / "site.pem")
    priv = [k for k in json.loads(run("key", "list", "--json").stdout) if k["private"]]
    assert priv and oct(os.stat(priv[0]["private"]).st_mode & 0o777) == "0o600"


def test_sif_id_group_id_all(run, image, tmp_path, conformance):
    run("key", "newpair", "--out", tmp_path / "k")
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    objs = [d.id for d in sif.read_sif(str(image)).descriptors]
    part = sif.read_sif(str(image)).primary_partition().id
    run("sign", "--key", key, "--sif-id", part, image)
    # a signature over part of the group: not the group, but that object
    r = run("verify", "--key", pub, image, ok=len(objs) == 1)
    if len(objs) > 1:
        assert r.returncode == 4 and "image changed since signing" in r.stderr
    r = run("verify", "--key", pub, "--sif-id", part, image)
    assert f"verified objects {part} of group 1" in r.stdout
    other = [i for i in objs if i != part]
    if other:
        r = run("verify", "--key", pub, "--sif-id", other[0], image, ok=False)
        assert r.returncode == 4 and f"does not cover object {other[0]}" in r.stderr
    r = run("verify", "--key", pub, "--group-id", 2, image, ok=False)
    assert r.returncode == 4 and "no signature covers group 2" in r.stderr
    r = run("verify", "--key", pub, "--group-id", 1, "--sif-id", 1, image, ok=False)
    assert r.returncode == 2
    # --all: every object covered
    two = tmp_path / "two.sif"
    shutil.copyfile(conformance / "images" / "two-groups.sif", two)
    two.chmod(0o644)
    run("sign", "--key", key, "--group-id", 1, two)
    run("verify", "--key", pub, two)
    r = run("verify", "--key", pub, "--all", two, ok=False)
    assert r.returncode == 4 and "object(s) 3 not covered" in r.stderr
    assert json.loads(run("verify", "--key", pub, "--all", "--json", two,
                          ok=False).stdout)["verified"] is False
    run("sign", "--key", key, "--group-id", 2, two)
    run("verify", "--key", pub, "--all", two)
    run("verify", "--key", pub, "--group-id", 2, two)


def test_reference_pgp_image_through_the_keyring(run, conformance, expected):
    """The reference implementation's PGP-signed image, its key imported into the keyring."""
    run("key", "import", conformance / "keys" / "pgp-public.DERIVED.asc")
    img = conformance / "images" / "one-group-signed-pgp.sif"
    r = run("verify", img)
    fpr = expected["one-group-signed-pgp.sif"]["objects"][2]["entity_fingerprint"].upper()
    assert f"[LOCAL]   Fingerprint: {fpr}" in r.stdout
    assert "Signing entity:" in r.stdout and "unit@test.com" in r.stdout


def test_bad_key_commands(run, tmp_path):
    for args in (("key", "import", tmp_path / "missing"), ("key", "remove", "DEADBEEFDEADBEEF"),
                 ("key", "export", "0", tmp_path / "x"), ("key", "newpair", "--name", "x"),
                 ("key", "import")):
        r = run(*args, ok=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode in (2, 4) and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "junk").write_text("hello\n")
    assert run("key", "import", tmp_path / "junk", ok=False).returncode == 4
