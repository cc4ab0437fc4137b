"""``hpccont key newpair``, ``sign`` and ``verify`` on an image built by ``hpccont build``."""
import json
import shutil
import stat

import pytest

from signlib import flip_byte
from hpccont.image import sif


@pytest.fixture
def image(busybox_sif, tmp_path):
    dst = tmp_path / "busybox.sif"
    shutil.copyfile(busybox_sif, dst)
    return dst


@pytest.fixture
def keypair(hpccont, tmp_path):
    r = hpccont("key", "newpair", "--out", tmp_path / "site")
    assert r.returncode == 0, r.stderr
    return tmp_path / "site.pem", tmp_path / "site.pub.pem"


def _one_line_failure(r, code=None):
    assert r.returncode != 0
    if code is not None:
        assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_newpair_modes(keypair):
    priv, pub = keypair
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()


def test_sign_verify_round_trip(hpccont, image, keypair):
    priv, pub = keypair
    before = sif.read_sif(str(image))
    primary = before.primary_partition()
    data = before.read_object(primary)
    assert _one_line_failure(hpccont("verify", "--key", pub, image)).endswith("no signatures")
    r = hpccont("sign", "--key", priv, image)
    assert r.returncode == 0, r.stderr
    after = sif.read_sif(str(image))
    sig = after.find(sif.DATA_SIGNATURE)[0]
    # as the reference writes it: no group, linked to group 1, SHA256, other objects untouched
    assert sig.raw_group == sif.GROUP_MASK and sig.linked_to_group and sig.linked_id == 1
    assert sig.hash_type == 1
    assert [d.to_dict() for d in after.descriptors[:-1]] == [d.to_dict() for d in before.descriptors]
    assert after.read_object(after.primary_partition()) == data
    assert after.header.data_size == before.header.data_size + sig.size_with_padding
    r = hpccont("verify", "--key", pub, "--json", image)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verified"] is True
    assert out["signatures"][0]["objects"] == [d.id for d in before.descriptors
                                               if d.group_id == 1]
    r = hpccont("verify", "--key", pub, image)
    assert r.returncode == 0 and "verified objects" in r.stdout and "ED25519 SHA256:" in r.stdout


def test_sign_twice_both_verify(hpccont, image, keypair, tmp_path):
    priv, pub = keypair
    r2 = hpccont("key", "newpair", "--out", tmp_path / "other")
    assert hpccont("sign", "--key", priv, image).returncode == 0
    assert hpccont("sign", "--key", tmp_path / "other.pem", image).returncode == 0
    assert len(sif.read_sif(str(image)).find(sif.DATA_SIGNATURE)) == 2
    # every signature must verify: with one of the two keys only, verify fails
    line = _one_line_failure(hpccont("verify", "--key", pub, image))
    assert "no matching key" in line
    r = hpccont("verify", "--key", pub, "--key", tmp_path / "other.pub.pem", "--json", image)
    assert r2.returncode == 0 and r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["signatures"]) == 2


@pytest.mark.parametrize("algo", ["rsa", "ecdsa"])
def test_rsa_and_ecdsa_keys(hpccont, image, tmp_path, algo):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    key = (rsa.generate_private_key(65537, 2048) if algo == "rsa"
           else ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "k.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert hpccont("sign", "--key", tmp_path / "k.pem", image).returncode == 0
    r = hpccont("verify", "--key", tmp_path / "k.pub", image)
    assert r.returncode == 0 and algo.upper() in r.stdout, r.stderr


def test_tampered_after_signing(hpccont, image, keypair):
    priv, pub = keypair
    assert hpccont("sign", "--key", priv, image).returncode == 0
    part = sif.read_sif(str(image)).primary_partition()
    flip_byte(image, part.offset + part.size - 100)
    line = _one_line_failure(hpccont("verify", "--key", pub, image), 4)
    assert f"image changed since signing (data of object {part.id})" in line


def test_bad_input_is_one_line(hpccont, image, keypair, tmp_path, busybox_squashfs):
    priv, pub = keypair
    cases = [
        (("verify",), 2), (("verify", "--key"), 2), (("verify", "--bogus", image), 2),
        (("verify", "--key", pub, tmp_path / "missing.sif"), 4),
        (("verify", "--key", tmp_path / "missing.pem", image), 4),
        (("verify", "--key", pub, busybox_squashfs), 4),
        (("verify", "--key", pub, tmp_path), 4),
        (("sign", image), 4),                 # no --key and an empty keyring
        (("sign", "--key", pub, image), 4), (("sign", "--key", priv, "--keyidx", "0", image), 2),
        (("sign", "--key", priv, "--group", "x", image), 2),
        (("sign", "--key", priv, "--group", "7", image), 4),
        (("sign", "--key", priv, tmp_path / "missing.sif"), 4),
        (("sign", "--key", priv, busybox_squashfs), 4),
        (("key",), 2), (("key", "oldpair", "--out", tmp_path / "x"), 2),
        (("key", "newpair", "--out", tmp_path / "site"), 4),
        (("key", "newpair", "--out", tmp_path / "no" / "dir"), 4),
    ]
    for args, code in cases:
        _one_line_failure(hpccont(*args, env={"HPCCONT_KEYS": str(tmp_path / "keys")}), code)
    assert len(sif.read_sif(str(image)).find(sif.DATA_SIGNATURE)) == 0
