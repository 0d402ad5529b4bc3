"""Mount options as mount(8) spells them (bftfs/fuse/options.py)."""

from __future__ import annotations

import pytest

from bftfs.fuse.options import DEFAULT_TIMEO, MountOptions, OptionError, parse


def test_defaults_and_the_options_mount_passes() -> None:
    o = parse("rw,defaults,nofail,_netdev,x-systemd.automount,relatime,suid,dev,exec")
    assert o == MountOptions()
    assert o.deadline == DEFAULT_TIMEO and not o.read_only and not o.allow_other


def test_the_kernels_flags_are_kept_for_the_kernel_and_survive_the_daemon_line() -> None:
    """``noatime`` was accepted and dropped: the mount showed ``relatime`` (issue 67)."""
    o = parse("noatime,nosuid,nodev,noatime,nonempty")
    assert o.kernel_flags == ("noatime", "nosuid", "nodev") and o.nonempty
    assert parse(o.to_string()) == o
    assert not parse("").nonempty and parse("").kernel_flags == ()


def test_every_bftfs_option() -> None:
    o = parse(
        "client=client1,ro,allow_other,attr_timeout=2.5,entry_timeout=0,timeo=3,"
        "metrics_port=0,metrics_addr=0.0.0.0"
    )
    assert (o.client, o.read_only, o.allow_other) == ("client1", True, True)
    assert (o.attr_timeout, o.entry_timeout, o.timeo, o.deadline) == (2.5, 0, 3, 3)
    assert (o.metrics_port, o.metrics_addr) == (0, "0.0.0.0")
    assert parse("hard").deadline is None
    assert parse("hard,timeo=4") == MountOptions(hard=True, timeo=4)  # tries every 4 s
    assert parse("hard,soft").deadline == DEFAULT_TIMEO  # the later option wins
    assert parse("ro,rw").read_only is False


def test_round_trip_through_the_daemon_command_line() -> None:
    for o in (
        MountOptions(),
        parse("client=c,ro,allow_other,hard,attr_timeout=0.5,metrics_port=9100"),
    ):
        assert parse(o.to_string()) == o
    base = MountOptions(client="a", attr_timeout=7)
    assert base.with_options("client=b") == MountOptions(client="b", attr_timeout=7)


@pytest.mark.parametrize(
    "bad", ["bogus", "timeo=soon", "timeo=-1", "attr_timeout=inf", "metrics_port=70000", "client="]
)
def test_bad_options_are_named(bad: str) -> None:
    with pytest.raises(OptionError, match=bad.split("=")[0]):
        parse(bad)


@pytest.mark.parametrize("gone", ["acregmin=3", "acregmax=60"])
def test_nfs_attribute_cache_options_are_refused_naming_leases(gone: str) -> None:
    """``acregmin``/``acregmax`` were folded into leases (issue 33): a mount asking for
    them is told what replaced them, not left with a silently shorter cache."""
    with pytest.raises(OptionError, match=r"removed: leases \(lease="):
        parse(gone)


def test_passthrough_is_off_unless_asked_and_round_trips() -> None:
    assert not parse("").passthrough
    o = parse("passthrough,passthrough_cache=64")
    assert (o.passthrough, o.passthrough_cache) == (True, 64)
    assert parse(o.to_string()) == o
    assert not parse("passthrough,nopassthrough").passthrough
    for bad in ("passthrough_cache=0", "passthrough_cache=x"):
        with pytest.raises(OptionError, match="passthrough_cache"):
            parse(bad)


def test_readahead_max_bounds_the_measured_window_and_round_trips() -> None:
    assert parse("").readahead_max == 64
    o = parse("readahead_max=8")
    assert o.readahead_max == 8 and "readahead_max=8" in o.to_string()
    assert parse(o.to_string()) == o
    assert "readahead_max" not in parse("").to_string()
    for bad in ("readahead_max=0", "readahead_max=big"):
        with pytest.raises(OptionError, match="readahead_max"):
            parse(bad)


def test_publish_is_on_unless_refused_and_round_trips() -> None:
    """``publish`` (issue 64, docs/fs.md "Publication"): a look asks the holder of an
    exclusive lease to publish instead of recalling it; on by default, ``nopublish``
    recalls."""
    assert parse("").publish and parse("publish").publish
    o = parse("nopublish")
    assert not o.publish and not parse(o.to_string()).publish
    assert parse("nopublish,publish").publish
    assert "publish" not in parse("").to_string()
