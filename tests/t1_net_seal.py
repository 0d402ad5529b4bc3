"""Tier 1: sealing a big message into a frame packs it once, in place (issue 34)."""

from __future__ import annotations

import os
import random
import tracemalloc

from bftfs.net.frames import packed, unpack
from bftfs.net.session import Session


def _pair() -> tuple[Session, Session]:
    a, b = os.urandom(32), os.urandom(32)
    return Session(send_key=a, recv_key=b), Session(send_key=b, recv_key=a)


def test_a_sealed_batch_of_fragments_opens_to_the_same_message() -> None:
    rnd = random.Random(34)
    msg = [0, 7, "rw.batch", [["rw.write", {"f": rnd.randbytes(349_526)}] for _ in range(4)]]
    sender, receiver = _pair()
    for _ in range(3):  # the packer's buffer is reused: each frame is its own message
        frame = sender.seal(msg)
        seq, *got = receiver.open(memoryview(frame)[4:])
        assert got == msg and seq == sender.send_seq
    assert sender.seal([0, 8, "ping", None]) != frame  # shorter messages after longer ones
    with packed([1, 2]) as view, packed([3]) as inner:  # nested: the inner one is a copy
        assert unpack(view) == [1, 2] and unpack(inner) == [3]


def test_sealing_a_big_message_allocates_only_its_frame() -> None:
    """``msgpack.packb`` grew a buffer to the message's size and copied it into a bytes
    object before the frame was allocated: three times the message at the peak.  Packed
    into the thread's packer (its buffer kept from the message before) and encrypted from
    there, the frame is the only new allocation."""
    size = 16 * 349_526  # a write wave of 1 MiB blocks' fragments to one node
    msg = [0, 1, "rw.batch", [["rw.write", {"f": bytes(size // 16)}] for _ in range(16)]]
    sender, _ = _pair()
    sender.seal(msg)  # the packer's buffer grows to the message once
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        frame = sender.seal(msg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(frame) > size
    assert peak - before < 1.2 * size


def test_a_writable_frame_is_opened_in_place_and_others_are_left_alone() -> None:
    """A big frame reaches ``Session.open`` as a writable view of the reader's buffer and
    is decrypted there (issue 34: no zeroed buffer of its size per frame): afterwards the
    buffer holds the packed message.  Frames as bytes are not written to; a tampered
    writable frame is refused like any other."""
    from bftfs.net.errors import FrameError
    from bftfs.net.frames import pack

    rnd = random.Random(3434)
    msg = [1, 5, 0, [{"f": rnd.randbytes(100_000 + k)} for k in range(3)]]
    sender, receiver = _pair()
    frame = bytearray(sender.seal(msg))
    view = memoryview(frame)[4:]
    seq, *got = receiver.open(view)
    assert got == msg and seq == 1
    assert bytes(frame[12 : 12 + len(pack(msg))]) == pack(msg)  # plaintext in place
    sealed = bytes(sender.seal(msg))
    assert receiver.open(sealed[4:])[1:] == msg
    assert sealed == bytes(sealed)  # (immutable: decrypted into a buffer of its own)
    bad = bytearray(sender.seal(msg))
    bad[-1] ^= 1
    try:
        receiver.open(memoryview(bad)[4:])
    except FrameError as e:
        assert e.reason == "bad_mac"
    else:
        raise AssertionError("a tampered frame opened")
