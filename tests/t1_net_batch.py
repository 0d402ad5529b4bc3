"""The request batcher's batch (``net/batch.py``): cutting queued requests into batches and
splitting a batch reply back onto them, shared by its two senders (``Batcher``, the
endpoint's ``Coalescer``).  Pure functions, no transport."""

from __future__ import annotations

from bftfs.net.batch import ITEM_MALFORMED, ITEM_OK, ITEM_REFUSED, cut, split_reply


def test_cut_keeps_order_and_bounds_count() -> None:
    assert cut(list(range(7)), 3, None, lambda _i: (10, 10)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert cut([], 3, None, lambda _i: (0, 0)) == []


def test_cut_bounds_request_and_reply_bytes_and_lets_a_big_item_go_alone() -> None:
    sizes = {"a": (40, 0), "b": (40, 0), "c": (40, 0), "big": (500, 0), "d": (10, 90)}
    chunks = cut(["a", "b", "c", "big", "d"], 10, 100, lambda k: sizes[k])
    # a+b = 80 <= 100; +c would be 120: a new batch; big alone; d's reply (90) fits alone.
    assert chunks == [["a", "b"], ["c"], ["big"], ["d"]]
    replies = {"x": (1, 60), "y": (1, 60)}
    assert cut(["x", "y"], 10, 100, lambda k: replies[k]) == [["x"], ["y"]]


def test_split_reply_reads_each_item_and_refuses_a_reply_of_another_shape() -> None:
    raw = [[0, "ok"], [1, ["code", "why"]], ["junk"], [2, "x"]]
    assert split_reply(raw, 4) == [
        (ITEM_OK, "ok"),
        (ITEM_REFUSED, ["code", "why"]),
        (ITEM_MALFORMED, None),
        (ITEM_MALFORMED, None),
    ]
    assert split_reply(raw, 3) is None
    assert split_reply({"not": "a list"}, 1) is None
