"""The encryption boundary's pure parts (issue 38, docs/confidentiality.md): sealing and
opening contents, what a flipped bit or a swapped block gives, and the update arguments and
answers the Q/U wrapper rewrites."""

from __future__ import annotations

import random

import pytest

from bftfs import fsobjects as obj
from bftfs.crypto import SEAL_OVERHEAD, SealError, VolumeKey, seal, unseal
from bftfs.fs.clients import Seal, SealBroken
from bftfs.fsobjects.limits import SEALED_EXTRA
from bftfs.rw.messages import block_id

RNG = random.Random(38)


def test_the_nodes_allowance_is_the_seals_overhead() -> None:
    assert SEALED_EXTRA == SEAL_OVERHEAD == 64


def test_sealing_draws_a_fresh_nonce_and_any_flipped_bit_fails_the_open() -> None:
    key = VolumeKey(RNG.randbytes(32)).subkey(b"bftfs-contents")
    data = RNG.randbytes(1000)
    a, b = seal(key, data, b"x"), seal(key, data, b"x")
    assert a != b and len(a) == len(data) + SEAL_OVERHEAD
    assert data not in a and unseal(key, a, b"x") == data
    for at in (0, 31, 32, 500, len(a) - 1):  # the nonce, the ciphertext, the tag
        bad = bytearray(a)
        bad[at] ^= 1
        with pytest.raises(SealError):
            unseal(key, bytes(bad), b"x")
    with pytest.raises(SealError):
        unseal(key, a, b"y")  # bound to other data
    with pytest.raises(SealError):
        unseal(key, a[:10], b"x")
    with pytest.raises(SealError):
        unseal(VolumeKey(RNG.randbytes(32)).subkey(b"bftfs-contents"), a, b"x")


def test_a_block_opens_only_as_itself_and_empty_stays_empty() -> None:
    s = Seal(VolumeKey(RNG.randbytes(32)))
    one, two = block_id(7, 0), block_id(7, 1)
    sealed = s.seal_block(one, b"contents")
    assert s.open_block(one, sealed) == b"contents"
    with pytest.raises(SealBroken):
        s.open_block(two, sealed)  # a node serving block 0 as block 1
    with pytest.raises(SealBroken):
        s.open_inline(sealed)  # nor as inline bytes
    assert s.seal_block(one, b"") == b"" and s.open_block(one, b"") == b""
    assert SealBroken("x").errno == 5  # EIO


def test_update_arguments_carry_sealed_inline_content_and_the_size_for_creates() -> None:
    s = Seal(VolumeKey(RNG.randbytes(32)))
    write = {"d": 1, "v": 2, "end": 5, "i": b"hello"}
    sealed = s.seal_argument("fs.write", write)
    assert write["i"] == b"hello"  # the caller's argument is left alone
    assert len(sealed["i"]) == 5 + SEAL_OVERHEAD and s.open_inline(sealed["i"]) == b"hello"
    created = s.seal_argument("fs.createwrite", {"o": 9, "i": b"abc"})
    assert created["end"] == 3 and b"abc" not in created["i"]
    many = s.seal_argument("fs.createmany", {"p": 1, "files": [{"i": b"one"}, {"i": b""}]})
    assert many["files"][0]["end"] == 3 and s.open_inline(many["files"][0]["i"]) == b"one"
    assert many["files"][1] == {"i": b""}  # an empty file stays empty
    assert s.seal_argument("fs.rename", {"i": b"x"}) == {"i": b"x"}  # no content there


def test_answers_are_opened_wherever_a_file_state_holds_inline_content() -> None:
    s = Seal(VolumeKey(RNG.randbytes(32)))
    sealed = s.seal_inline(b"small file")
    answer = [{"k": "f", "size": 10, "i": sealed}, {"k": "d", "i": b"not content"}]
    opened = s.open_answer(answer)
    assert opened[0]["i"] == b"small file" and opened[1]["i"] == b"not content"
    assert answer[0]["i"] == sealed  # a copy: the Q/U client's answer is left alone
    untouched = {"k": "f", "size": 0, "nx": 0}
    assert s.open_answer(untouched) is untouched
    bad = bytearray(sealed)
    bad[40] ^= 4
    with pytest.raises(SealBroken):
        s.open_answer({"k": "f", "i": bytes(bad)})


def test_nodes_take_inline_content_of_the_size_or_sealed_and_nothing_else() -> None:
    """The one rule the nodes change: ``i`` is ``size`` bytes, or ``size + 64``."""
    from bftfs.fsobjects.state import check_inline
    from bftfs.qu.objects import MethodRefused

    assert check_inline({"i": b"x" * 5}, 5) == b"x" * 5
    assert check_inline({"i": b"x" * (5 + SEALED_EXTRA)}, 5) is not None
    for n in (4, 6, 5 + SEALED_EXTRA - 1, 5 + SEALED_EXTRA + 1):
        with pytest.raises(MethodRefused):
            check_inline({"i": b"x" * n}, 5)
    with pytest.raises(MethodRefused):
        check_inline({"i": b"x" * (obj.INLINE_MAX + 1)}, obj.INLINE_MAX + 1)


def test_an_extended_attribute_value_opens_only_under_its_name() -> None:
    s = Seal(VolumeKey(RNG.randbytes(32)))
    arg = {"name": b"user.a", "value": b"secret value", "flags": 0}
    sealed = s.seal_argument("fs.setxattr", arg)
    assert arg["value"] == b"secret value" and b"secret" not in sealed["value"]
    assert s.open_xattr(b"user.a", sealed["value"]) == b"secret value"
    with pytest.raises(SealBroken):
        s.open_xattr(b"user.b", sealed["value"])  # moved to another name
    names = {n: s.seal_xattr_name(9, n) for n in (b"user.a", b"user.e")}
    state = {"k": "f", "x": {names[b"user.a"]: sealed["value"], names[b"user.e"]: b""}}
    assert s.open_state(9, state) == {"k": "f", "x": {b"user.a": b"secret value", b"user.e": b""}}
    # The name sealed too, bound to its object; the value bound to the plain name.
    on_object = s.seal_argument("fs.setxattr", arg, [9])
    assert on_object["name"] == names[b"user.a"] != s.seal_xattr_name(8, b"user.a")
    assert s.open_xattr(b"user.a", on_object["value"]) == b"secret value"
    assert s.seal_argument("fs.removexattr", {"name": b"user.a"}, 9)["name"] == names[b"user.a"]
    assert s.seal_query(9, "fs.getxattr", b"user.a") == names[b"user.a"]
    assert s.open_xattr_names(9, [names[b"user.e"], names[b"user.a"]]) == [b"user.a", b"user.e"]
    with pytest.raises(SealBroken):
        s.open_xattr_name(8, names[b"user.a"])


def test_a_symlink_target_is_sealed_with_its_length_and_a_bad_one_left_to_be_refused() -> None:
    import stat

    from bftfs.fsobjects.names import _symlink_target
    from bftfs.qu.objects import MethodRefused

    s = Seal(VolumeKey(RNG.randbytes(32)))
    arg = {"mode": stat.S_IFLNK | 0o777, "t": b"/etc/secret-place"}
    sealed = s.seal_argument("fs.create", arg)
    assert sealed["tl"] == 17 and b"secret" not in sealed["t"]
    assert s.open_target(sealed["t"]) == b"/etc/secret-place"
    assert _symlink_target(sealed) == (sealed["t"], 17)  # the nodes' rule
    assert s.open_state(9, {"k": "f", "mode": arg["mode"], "t": sealed["t"]})["t"] == arg["t"]
    for bad in (b"", b"a\0b", b"x" * (obj.PATH_MAX + 1)):  # refused by the nodes as before
        unsealed = s.seal_argument("fs.create", dict(arg, t=bad))
        assert unsealed["t"] == bad and "tl" not in unsealed
        with pytest.raises(MethodRefused):
            _symlink_target(unsealed)
    regular = {"mode": stat.S_IFREG | 0o644, "t": b"x"}  # only a symlink's t is a target
    assert s.seal_argument("fs.create", regular) == regular
    for tl in (16, 18):
        with pytest.raises(MethodRefused):
            _symlink_target(dict(sealed, tl=tl))


def test_names_seal_alike_per_directory_open_only_there_and_stay_legal_names() -> None:
    from bftfs.crypto import siv_open, siv_seal
    from bftfs.fs.clients import SEALED_NAME_MAX
    from bftfs.fs.errors import NameTooLong

    s = Seal(VolumeKey(RNG.randbytes(32)))
    a = s.seal_name(7, b"report.txt")
    assert a == s.seal_name(7, b"report.txt") != s.seal_name(8, b"report.txt")
    assert s.open_name(7, a) == b"report.txt" and b"report" not in a
    with pytest.raises(SealBroken):
        s.open_name(8, a)  # moved to another directory
    for n in (1, 100, SEALED_NAME_MAX):
        sealed = s.seal_name(1, RNG.randbytes(n).replace(b"/", b"x").replace(b"\0", b"y"))
        assert obj.check_name(sealed) and len(sealed) <= obj.NAME_MAX
    with pytest.raises(NameTooLong):
        s.seal_name(1, b"n" * (SEALED_NAME_MAX + 1))
    for bad in (b"", b".", b"..", b"a/b", b"a\0b", b"n" * 256):  # left to the nodes' refusal
        assert s.seal_name(1, bad) == bad
    k1, k2 = RNG.randbytes(32), RNG.randbytes(32)
    raw = siv_seal(k1, k2, b"name", b"dir")
    for at in range(len(raw)):
        bad = bytearray(raw)
        bad[at] ^= 0x10
        with pytest.raises(SealError):
            siv_open(k1, k2, bytes(bad), b"dir")


@pytest.mark.expected_logs("bftfs.fs.clients.seal", match=r"an entry left out: name b'garbage'")
def test_every_update_and_query_naming_an_entry_seals_the_name_in_its_directory() -> None:
    s = Seal(VolumeKey(RNG.randbytes(32)))
    for method in ("fs.create", "fs.mkdir", "fs.link", "fs.unlink", "fs.rmdir", "fs.createwrite"):
        assert s.seal_argument(method, {"p": 3, "name": b"x"})["name"] == s.seal_name(3, b"x")
    moved = s.seal_argument("fs.rename", {"sp": 3, "sn": b"a", "dp": 4, "dn": b"b"})
    assert (moved["sn"], moved["dn"]) == (s.seal_name(3, b"a"), s.seal_name(4, b"b"))
    many = s.seal_argument("fs.createmany", {"p": 5, "files": [{"name": b"f", "i": b""}]})
    assert many["files"] == [{"name": s.seal_name(5, b"f"), "i": b""}]
    assert s.seal_query(6, "fs.lookup", b"x") == s.seal_name(6, b"x")
    assert s.seal_query([6, 9], "fs.lookupstat", {"p": 6, "o": 9, "name": b"x"})["name"] == (
        s.seal_name(6, b"x")
    )
    xattr = {"name": b"user.x", "value": b""}  # an object's name, not a directory's entry
    assert s.seal_argument("fs.setxattr", xattr, [6])["name"] == s.seal_xattr_name(6, b"user.x")
    entries = {s.seal_name(6, b"one"): [10, 8], b"garbage": [11, 8]}
    from bftfs.fsobjects.dirents import Entries, all_entries

    packed = Entries({})
    for name, entry in entries.items():
        packed[name] = entry
    assert all_entries(s.open_entries(6, packed.packed())) == {b"one": [10, 8]}
