"""Mount options as mount(8) spells them (bftfs/fuse/options.py)."""

from __future__ import annotations

import pytest

from bftfs.fuse.options import DEFAULT_TIMEO, MountOptions, OptionError, parse


def test_defaults_and_the_options_mount_passes() -> None:
    o = parse("rw,defaults,nofail,_netdev,x-systemd.automount,noatime,nosuid,nodev")
    assert o == MountOptions()
    assert o.deadline == DEFAULT_TIMEO and not o.read_only and not o.allow_other


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


def test_acreg_defaults_to_the_attribute_timeout_and_round_trips() -> None:
    assert MountOptions().acreg == (1.0, 1.0)  # the fixed timeout, as before
    assert parse("attr_timeout=2").acreg == (2.0, 2.0)
    assert parse("acregmin=3,acregmax=60").acreg == (3.0, 60.0)
    assert parse("acregmax=60").acreg == (1.0, 60.0)
    assert parse("acregmin=30,acregmax=10").acreg == (30.0, 30.0)  # clamped, as NFS does
    o = parse("acregmin=3,acregmax=60")
    assert parse(o.to_string()) == o
    with pytest.raises(OptionError, match="acregmax"):
        parse("acregmax=-1")


class _Clock:
    """Just what :meth:`MetadataCache.attr_timeout` reads of a file system."""

    attr_ttl = 1.0
    acregmin: float | None = None
    acregmax: float | None = None

    def clock_ns(self) -> int:
        return 1000 * 10**9


def test_a_regular_files_timeout_grows_with_the_time_since_it_changed() -> None:
    from bftfs.fs.caches import MetadataCache

    c = _Clock()
    timeout = MetadataCache.attr_timeout
    file = {"k": "f", "mode": 0o100644, "mt": 900 * 10**9, "ct": 990 * 10**9}
    folder = {"k": "d", "mode": 0o40755, "mt": 0, "ct": 0}
    assert timeout(c, file) == timeout(c, folder) == 1.0
    c.acregmin, c.acregmax = 3.0, 60.0
    assert timeout(c, file) == 3.0  # changed 10 s ago: 1 s, clamped
    assert timeout(c, dict(file, ct=500 * 10**9, mt=500 * 10**9)) == 50.0  # 500 s unchanged
    assert timeout(c, dict(file, ct=0, mt=0)) == 60.0
    assert timeout(c, folder) == 1.0  # directories: as before
