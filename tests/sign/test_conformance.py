"""Verification of the reference implementation's signed images (DSSE, PGP, legacy PGP).

Every signed image must verify with the key(s) that made it and fail with others; tampering with
a partition byte or a descriptor field must be caught the way the reference verifier catches it.
"""
import pytest

from signlib import flip_byte
from hpccont.errors import SignatureError
from hpccont.image import sif
from hpccont.image.sign import verify_image

ED, RSA, ECDSA, PGP = "ed25519-public.pem", "rsa-public.pem", "ecdsa-public.pem", \
    "pgp-public.DERIVED.asc"

# image -> (keys that verify it, kind, {signature id: covered object ids})
SIGNED = {
    "one-group-signed-dsse.sif": ([ED, RSA], "dsse", {3: [1, 2]}),
    "two-groups-signed-dsse.sif": ([ED, RSA], "dsse", {4: [1, 2], 5: [3]}),
    "one-group-signed-pgp.sif": ([PGP], "pgp", {3: [1, 2]}),
    "one-group-signed-legacy.sif": ([PGP], "legacy-pgp", {3: [2]}),
}
UNSIGNED = ["one-group.sif", "two-groups.sif", "empty.sif", "one-object-sbom.sif",
            "one-object-generic-json.sif", "empty-launch-script.sif"]
WRONG = {"dsse": [ECDSA, PGP], "pgp": [ED, RSA, ECDSA], "legacy-pgp": [ED, RSA]}
# byte offset of a descriptor's uid field (8 bytes) from the descriptor's start
DESCRIPTOR_UID_AT = 4 + 1 + 4 + 4 + 4 + 8 * 5


def _keys(conformance, names):
    return [str(conformance / "keys" / n) for n in names]


@pytest.mark.parametrize("image", sorted(SIGNED))
def test_signed_images_verify_with_each_right_key(conformance, image):
    keys, kind, covered = SIGNED[image]
    for key in keys:
        got = verify_image(str(conformance / "images" / image), _keys(conformance, [key]),
                           legacy=kind == "legacy-pgp")
        assert {v.signature_id: v.objects for v in got} == covered
        assert all(v.kind == kind for v in got)
        assert all(len(v.signers) == 1 for v in got)


def test_both_dsse_keys_are_reported(conformance):
    got = verify_image(str(conformance / "images" / "one-group-signed-dsse.sif"),
                       _keys(conformance, [ED, RSA]))
    signers = " ".join(got[0].signers)
    assert "ED25519 SHA256:x6l8ZblpSSXGaPMCzySedWg88BwIFcz8jlPb6el0mFs" in signers
    assert "RSA-4096 SHA256:BhCwr7qZulYcOMSl2Jt2DuYHxHNnN6th4NdMqR/PGa4" in signers


def test_pgp_signer_is_the_descriptor_entity(conformance, expected):
    got = verify_image(str(conformance / "images" / "one-group-signed-pgp.sif"),
                       _keys(conformance, [PGP]))
    fpr = expected["one-group-signed-pgp.sif"]["objects"][2]["entity_fingerprint"]
    assert fpr.upper() in got[0].signers[0] and "unit@test.com" in got[0].signers[0]


@pytest.mark.parametrize("image", sorted(SIGNED))
def test_signed_images_fail_with_wrong_keys(conformance, image):
    kind = SIGNED[image][1]
    for key in WRONG[kind]:
        with pytest.raises(SignatureError, match="no matching key"):
            verify_image(str(conformance / "images" / image), _keys(conformance, [key]),
                         legacy=True)


@pytest.mark.parametrize("image", UNSIGNED)
def test_unsigned_images_have_no_signatures(conformance, image):
    with pytest.raises(SignatureError, match="no signatures$"):
        verify_image(str(conformance / "images" / image), _keys(conformance, [ED]))


@pytest.mark.parametrize("image", sorted(SIGNED))
def test_partition_byte_flipped(copy_image, conformance, expected, image):
    path = copy_image(image)
    obj = next(o for o in expected[image]["objects"] if o["type"] == "Partition"
               and o["part_type"] == "PrimSys")
    verify_image(str(path), _keys(conformance, SIGNED[image][0]), legacy=True)
    flip_byte(path, obj["offset"] + obj["size"] // 2)
    with pytest.raises(SignatureError, match=f"image changed since signing .*object.* {obj['id']}"):
        verify_image(str(path), _keys(conformance, SIGNED[image][0]), legacy=True)


@pytest.mark.parametrize("image", ["one-group-signed-dsse.sif", "two-groups-signed-dsse.sif",
                                   "one-group-signed-pgp.sif"])
def test_descriptor_field_changed(copy_image, conformance, image):
    path = copy_image(image)
    flip_byte(path, sif.DESCRIPTORS_OFFSET + DESCRIPTOR_UID_AT)     # object 1's uid
    with pytest.raises(SignatureError, match=r"image changed since signing \(descriptor of "
                                             r"object 1\)"):
        verify_image(str(path), _keys(conformance, SIGNED[image][0]))


def test_header_id_changed(copy_image, conformance):
    path = copy_image("one-group-signed-dsse.sif")
    flip_byte(path, 50)                                    # inside the image id
    with pytest.raises(SignatureError, match="global header"):
        verify_image(str(path), _keys(conformance, [ED]))


def test_envelope_signature_changed(copy_image, conformance, expected):
    path = copy_image("one-group-signed-dsse.sif")
    sig = expected["one-group-signed-dsse.sif"]["objects"][2]
    data = path.read_bytes()
    at = data.index(b'"sig":"', sig["offset"]) + 12          # inside the Ed25519 signature
    flip_byte(path, at)
    with pytest.raises(SignatureError, match="no matching key or bad signature"):
        verify_image(str(path), _keys(conformance, [ED]))
    # the RSA signature is still intact: one good signature in the envelope suffices
    assert verify_image(str(path), _keys(conformance, [RSA]))[0].objects == [1, 2]


def test_legacy_ignores_descriptors_but_not_data(copy_image, conformance):
    """Legacy signatures protect object data only: the reference accepts descriptor edits."""
    path = copy_image("one-group-signed-legacy.sif")
    flip_byte(path, sif.DESCRIPTORS_OFFSET + sif.DESCRIPTOR_SIZE + DESCRIPTOR_UID_AT)
    assert verify_image(str(path), _keys(conformance, [PGP]), legacy=True)[0].objects == [2]


def test_legacy_needs_opt_in(conformance, hpccont):
    """As in Apptainer: legacy signatures are not looked at without --legacy-insecure."""
    img = str(conformance / "images" / "one-group-signed-legacy.sif")
    key = _keys(conformance, [PGP])
    with pytest.raises(SignatureError, match="only legacy signatures.*--legacy-insecure"):
        verify_image(img, key)
    r = hpccont("verify", "--key", key[0], img)
    assert r.returncode == 4 and "--legacy-insecure" in r.stderr, r.stderr
    r = hpccont("verify", "--legacy-insecure", "--key", key[0], img)
    assert r.returncode == 0 and "legacy-pgp" in r.stdout, r.stderr


def test_site_policy_never_accepts_legacy(conformance, tmp_path, monkeypatch):
    from hpccont.image.sign import require_verified
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    img = str(conformance / "images" / "one-group-signed-legacy.sif")
    with pytest.raises(SignatureError, match="only legacy signatures"):
        require_verified(img, "sif", _keys(conformance, [PGP]))


def test_missing_and_bad_key_files(conformance, tmp_path):
    img = str(conformance / "images" / "one-group-signed-dsse.sif")
    with pytest.raises(SignatureError, match="key file not found"):
        verify_image(img, [str(tmp_path / "nope.pem")])
    bad = tmp_path / "bad.pem"
    bad.write_text("hello\n")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        verify_image(img, [str(bad)])
    with pytest.raises(SignatureError, match="no keys to verify with"):
        verify_image(img, [])
