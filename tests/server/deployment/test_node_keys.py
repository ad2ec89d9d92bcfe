"""SuperNode authentication keys in the form Flower reads."""

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.deployment.node_keys import make_node_keys


def test_node_keys_are_openssh_ec_p384_and_match(tmp_path):
    keys = make_node_keys(tmp_path, name="node-0")
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert private.public_key().public_numbers() == public.public_numbers()
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="plain file name"):
        make_node_keys(tmp_path, name="../node")


def test_key_files_and_folder_modes_hold_whatever_the_umask(tmp_path, open_umask):
    keys = make_node_keys(tmp_path / "keys", name="node-0")
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in [keys.private_key.parent, keys.private_key, keys.public_key]
    }
    assert modes == {"keys": 0o700, "node-0": 0o600, "node-0.pub": 0o644}
