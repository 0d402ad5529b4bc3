"""Tier 1: a resend waits while big replies arrive at the measured rate (``net/rtt.Arrival``).

docs/wan.md item 2: on a 50 Mbit/s link a read's 16 fragments (5.6 MB) take 0.9 s to
arrive, so a request whose reply is queued behind another such reply is answered 1.8 s
after it was sent, past the 1 s resend interval; resending it then only had the node send
both again.  The rule is pure (time is an argument); the second test feeds it through
``FrameReader.on_progress`` under trio's ``MockClock`` (the sender paces the link).
"""

from __future__ import annotations

import trio
import trio.testing

from bftfs.net.frames import LENGTH, FrameReader
from bftfs.net.rtt import Arrival

RATE = 6.25e6  # 50 Mbit/s
CHUNK = 64 * 1024
FRAME = 16 * 349_726  # 16 fragments of a 1 MiB block (m = 3)
INTERVAL = 1.0  # the resend interval's floor (``resend_after``)


def chunks(frames: int, start: float) -> list[tuple[float, int, int]]:
    """(time, got, left) of each chunk after the first of ``frames`` back-to-back frames,
    as ``FrameReader._read_rest`` reports them (its first chunk is buffered already)."""
    out = []
    t = start
    for _ in range(frames):
        have = CHUNK
        while have < FRAME:
            got = min(CHUNK, FRAME - have)
            t += got / RATE
            have += got
            out.append((t, got, FRAME - have))
        t += CHUNK / RATE  # the next frame's first chunk
    return out


def first_resend(arrival: Arrival, feed: list[tuple[float, int, int]], due: float) -> float:
    """When a request whose resend falls due at ``due`` is resent (``Endpoint.call`` with
    ``_wait_reply``), the chunks of ``feed`` arriving meanwhile."""
    i, t = 0, due
    while True:
        while i < len(feed) and feed[i][0] <= t:
            arrival.chunk(feed[i][1], feed[i][2], feed[i][0])
            i += 1
        hold = arrival.hold(t, INTERVAL)
        if hold <= 0:
            return t
        t += hold


def test_a_reply_queued_behind_a_big_one_is_not_resent_while_they_arrive() -> None:
    arrival = Arrival()
    warm = chunks(1, start=-5.0)  # an earlier read measured the link
    for t, got, left in warm:
        arrival.chunk(got, left, t)
    assert abs(arrival.rate - RATE) / RATE < 0.02
    feed = chunks(2, start=0.0)  # the reply awaited is the second frame
    answered = feed[-1][0]
    assert answered > 1.7  # past the interval: the old rule resent at 1.0
    assert first_resend(arrival, feed, due=INTERVAL) > answered


def test_a_silent_node_is_resent_to_at_the_interval_and_a_stalled_one_soon_after() -> None:
    assert first_resend(Arrival(), [], due=INTERVAL) == INTERVAL  # nothing arriving: as before
    arrival = Arrival()
    feed = chunks(2, start=0.0)
    stalled = [c for c in feed if c[0] < 0.5]  # the link stops half way through a frame
    at = first_resend(arrival, stalled, due=INTERVAL)
    last, left = stalled[-1][0], stalled[-1][2]
    # Held for the interval after the last chunk and the rest of the frame at the rate
    # measured (no frame measured yet: the interval alone).
    assert arrival.rate == 0 and left > 0
    assert abs(at - (last + INTERVAL)) < 1e-9


def test_frame_reader_reports_each_chunk_of_a_big_frame() -> None:
    arrival = Arrival()
    reports: list[tuple[int, int]] = []

    async def main() -> None:
        send, receive = trio.testing.memory_stream_pair()
        reader = FrameReader(receive, max_frame=FRAME)

        def progress(got: int, left: int) -> None:
            reports.append((got, left))
            arrival.chunk(got, left, trio.current_time())

        reader.on_progress = progress

        async def sender() -> None:
            for _ in range(2):
                data = LENGTH.pack(FRAME) + bytes(FRAME)
                for at in range(0, len(data), CHUNK):
                    await send.send_all(data[at : at + CHUNK])
                    await trio.sleep(CHUNK / RATE)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            for _ in range(2):
                frame = await reader.read()
                assert frame is not None and len(frame) == FRAME

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]
    assert sum(1 for _, left in reports if left == 0) == 2  # each frame's end
    assert abs(arrival.rate - RATE) / RATE < 0.05
    assert arrival.left == 0
