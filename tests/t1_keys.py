"""Key backup (issue 67): ``bftfs keys export`` seals a cluster directory's private keys
under a passphrase (Argon2id, then ``SecretBox``: ``crypto.seal_with_passphrase``) and
``bftfs keys import`` restores them: a round trip after the directory is lost gives the
same files; a wrong passphrase or an altered archive is a clear error with exit 5, never a
traceback, and writes nothing; a key that differs from the one in place is refused unless
``--force``; another cluster's archive writes nothing.  Real key files of
``local.init_cluster`` and the real command (in process); no node runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from nacl.pwhash import argon2id  # tests may use nacl; the package only in crypto.py

from bftfs import crypto, local
from bftfs.cli.keys import members
from bftfs.cli.main import main


def tree(home: Path) -> dict[str, bytes]:
    """Every key file under ``home`` (``private`` directories), by relative path."""
    return {
        str(p.relative_to(home)): p.read_bytes()
        for p in sorted(home.rglob("*"))
        if p.is_file() and "private" in p.parts
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    home = tmp_path / "c"
    local.init_cluster(home, map_size=1 << 24)
    (tmp_path / "pass").write_text("correct horse battery staple\n")
    (tmp_path / "wrong").write_text("correct horse battery stapler\n")
    return home


def bftfs(*args: str) -> int:
    return main(list(args))


def test_round_trip_restores_a_lost_directory(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, pp = tmp_path / "keys.bin", str(tmp_path / "pass")
    before = tree(cluster)
    # Nodes' keys and view chains, clients', the volume key, the admin key and its chains.
    assert len(before) == 6 * 2 + 2 + 1 + 2
    assert (
        bftfs("keys", "export", str(archive), "--dir", str(cluster), "--passphrase-file", pp) == 0
    )
    assert archive.stat().st_mode & 0o777 == 0o600
    data = archive.read_bytes()
    for name, secret in before.items():  # nothing of any key in the clear
        assert secret.strip() not in data, name
        if name.endswith("key"):
            assert bytes.fromhex(secret.decode()) not in data, name
    # Refuses to overwrite the archive without --force.
    assert (
        bftfs("keys", "export", str(archive), "--dir", str(cluster), "--passphrase-file", pp) == 5
    )
    config = (cluster / "cluster.toml").read_bytes()
    shutil.rmtree(cluster)
    capsys.readouterr()
    assert (
        bftfs("keys", "import", str(archive), "--dir", str(cluster), "--passphrase-file", pp) == 0
    )
    out = capsys.readouterr().out
    assert "restored the configuration" in out and "17 restored, 0 already in place" in out
    assert tree(cluster) == before and (cluster / "cluster.toml").read_bytes() == config
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in cluster.rglob("private/*"))
    # Again: everything in place, nothing written.
    assert (
        bftfs("keys", "import", str(archive), "--dir", str(cluster), "--passphrase-file", pp) == 0
    )
    assert "0 restored, 17 already in place" in capsys.readouterr().out


def test_wrong_passphrase_and_altered_archive_are_clear_errors(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "keys.bin"
    pp, wrong = str(tmp_path / "pass"), str(tmp_path / "wrong")
    assert (
        bftfs("keys", "export", str(archive), "--dir", str(cluster), "--passphrase-file", pp) == 0
    )
    (cluster / "admin" / "private" / "key").unlink()
    before = tree(cluster)
    capsys.readouterr()
    code = bftfs("keys", "import", str(archive), "--dir", str(cluster), "--passphrase-file", wrong)
    err = capsys.readouterr().err
    assert code == 5 and "wrong passphrase, or the archive was altered" in err, err
    assert "Traceback" not in err and tree(cluster) == before
    altered = bytearray(archive.read_bytes())
    altered[-20] ^= 1
    archive.write_bytes(bytes(altered))
    code = bftfs("keys", "import", str(archive), "--dir", str(cluster), "--passphrase-file", pp)
    assert code == 5 and "the archive was altered" in capsys.readouterr().err
    assert tree(cluster) == before


def test_a_different_key_in_place_is_refused_unless_forced(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, pp = tmp_path / "keys.bin", str(tmp_path / "pass")
    assert (
        bftfs("keys", "export", str(archive), "--dir", str(cluster), "--passphrase-file", pp) == 0
    )
    node_key = cluster / "node2" / "private" / "key"
    good = node_key.read_bytes()
    crypto.save_secret(node_key, bytes(32))  # damaged in place
    capsys.readouterr()
    code = bftfs("keys", "import", str(archive), "--dir", str(cluster), "--passphrase-file", pp)
    assert code == 5 and "nodes/2/private/key" in capsys.readouterr().err
    assert node_key.read_bytes() != good
    forced = ("--passphrase-file", pp, "--force")
    assert bftfs("keys", "import", str(archive), "--dir", str(cluster), *forced) == 0
    assert node_key.read_bytes() == good and "1 replaced" in capsys.readouterr().out
    # Another cluster's archive: none of its keys is this one's, nothing written.
    other = tmp_path / "other"
    local.init_cluster(other, map_size=1 << 24)
    theirs = tmp_path / "theirs.bin"
    assert bftfs("keys", "export", str(theirs), "--dir", str(other), "--passphrase-file", pp) == 0
    before = tree(cluster)
    code = bftfs("keys", "import", str(theirs), "--dir", str(cluster), "--passphrase-file", pp)
    assert code == 5 and "another cluster's archive" in capsys.readouterr().err
    assert tree(cluster) == before


def test_every_key_init_makes_is_in_the_backup(cluster: Path) -> None:
    """A key added to ``init`` without a place in :func:`members` would go unbacked."""
    cfg = local.load_cluster(cluster)
    backed = {p.resolve() for p in members(cfg).values()}
    secrets = {p.resolve() for p in cluster.rglob("private/*") if p.is_file()}
    assert secrets and secrets <= backed


def test_the_sealing_refuses_every_altered_byte_class() -> None:
    """Magic, salt, costs, nonce, ciphertext: each altered is refused (cheap costs here:
    the construction, not the stretching, is under test)."""
    cheap = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
    sealed = crypto.seal_with_passphrase(b"pw", b"the keys", **cheap)
    assert crypto.open_with_passphrase(b"pw", sealed) == b"the keys"
    magic = len(crypto.PASSPHRASE_MAGIC)
    costs = magic + argon2id.SALTBYTES
    for at, flip, expect in (
        (0, 0x80, "not a bftfs"),
        (magic, 0x80, "altered"),  # salt
        (costs + 7, 0x02, "altered"),  # opslimit 1 -> 3: a valid cost, another key
        (costs + 7, 0x80, "damaged"),  # opslimit 129: beyond "sensitive", refused unrun
        (costs + 8, 0x80, "damaged"),  # memlimit's high byte: terabytes, refused unrun
        (costs + 16, 0x80, "altered"),  # nonce
        (len(sealed) - 1, 0x80, "altered"),  # tag / ciphertext
    ):
        bad = bytearray(sealed)
        bad[at] ^= flip
        with pytest.raises(crypto.PassphraseError, match=expect):
            crypto.open_with_passphrase(b"pw", bytes(bad))
    with pytest.raises(crypto.PassphraseError, match="truncated"):
        crypto.open_with_passphrase(b"pw", sealed[: magic + 10])
