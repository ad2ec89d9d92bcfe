"""``fedmodel make-node-key``: modes whatever the umask, an existing key refused as one line."""

import os
import stat

from simulations.cli import main


def test_node_key_modes_under_umask_000_and_refusal_of_an_existing_key(tmp_path, capsys):
    previous = os.umask(0)
    try:
        assert main(["make-node-key", "--out", str(tmp_path / "k"), "--name", "n"]) == 0
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "k").iterdir()}
    assert modes == {"n": 0o600, "n.pub": 0o644}
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    before = (tmp_path / "k" / "n").read_bytes()
    capsys.readouterr()
    assert main(["make-node-key", "--out", str(tmp_path / "k"), "--name", "n"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmodel: refusing to overwrite") and err.count("\n") == 1
    assert (tmp_path / "k" / "n").read_bytes() == before
