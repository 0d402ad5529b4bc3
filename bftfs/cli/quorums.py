"""``bftfs quorums``: for ``t`` faulty servers (``b`` of them Byzantine) on ``n`` servers,
which protocol can run, its quorum sizes, load and fault tolerance, and what breaks at one
fault more; then seed 001's constructions for ``f = b`` (docs/quorums.md).

Pure arithmetic from ``bftfs/thresholds.py`` and ``bftfs/quorums/``: no cluster needed,
so an operator asks before ``bftfs init``.  Exit 0 when both protocols can run, 3 (a bad
configuration) when one cannot, its broken rule printed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from bftfs.cli.common import EXIT_CONFIG
from bftfs.config import default_sizes
from bftfs.quorums import grid
from bftfs.quorums import threshold as th
from bftfs.thresholds import fault_rule, pasis_rules, qu_min_servers, qu_quorums, qu_rules

#: The most nodes a cluster may have (``config.validate``: zfec makes at most 256 fragments).
MAX_NODES = 256


@dataclass(frozen=True)
class Protocol:
    """One protocol at the asked sizes: its quorum, whether its rules hold, and which
    rules break with one more faulty server or one more Byzantine one."""

    name: str
    sizes: str
    quorum: int
    n: int
    broken: list[str]
    one_more_fault: list[str]
    one_more_liar: list[str]

    @property
    def load(self) -> Fraction:
        return th.load(self.quorum, self.n)


def _fraction(x: Fraction) -> str:
    return f"{x.numerator}/{x.denominator} = {float(x):.3f}"


def qu_protocol(n: int, t: int, b: int) -> Protocol:
    """Q/U at the smallest quorum sizes for ``n`` (``qu_quorums``)."""
    q, r = qu_quorums(n, t, b)
    if q == 0:
        why = f"no Q/U quorum sizes for n={n}: Q/U needs n >= 3t + 2b + 1 = {qu_min_servers(t, b)}"
        return Protocol("Q/U (metadata)", "-", 0, n, [why], [], [])

    def rules(t_: int, b_: int) -> list[str]:
        return qu_rules(n, t_, b_, q, r)

    return _protocol("Q/U (metadata)", f"q={q}, r={r}", q, n, t, b, rules)


def pasis_protocol(n: int, t: int, b: int, qc: int | None, m: int | None) -> Protocol:
    """PASIS at ``QC`` and ``m`` (the configuration's defaults when not given)."""
    _, qc_, m_ = default_sizes(t, b, n, qc, m)

    def rules(t_: int, b_: int) -> list[str]:
        return pasis_rules(n, t_, b_, qc_, m_)

    sizes = f"QC={qc_}, m={m_}, reads N-t={n - t}"
    return _protocol("PASIS (blocks)", sizes, n - t, n, t, b, rules)


def _protocol(
    name: str,
    sizes: str,
    quorum: int,
    n: int,
    t: int,
    b: int,
    rules: Callable[[int, int], list[str]],
) -> Protocol:
    """``rules(t, b)`` at the asked thresholds, at ``t + 1`` faulty (``b`` Byzantine) and
    at ``b + 1`` Byzantine (``t`` grows with it when ``b = t``)."""
    return Protocol(
        name, sizes, quorum, n, rules(t, b), rules(t + 1, b), rules(max(t, b + 1), b + 1)
    )


def _protocol_lines(protocols: list[Protocol], t: int, b: int) -> list[str]:
    lines = [f"{'protocol':<16}{'runs':<6}{'quorum sizes':<30}{'load':<16}crashes survived"]
    for p in protocols:
        if p.broken:
            lines.append(f"{p.name:<16}{'NO':<6}{p.sizes:<30}")
            lines += [f"    {why}" for why in p.broken]
            continue
        survives = th.fault_tolerance(p.quorum, p.n)
        lines.append(f"{p.name:<16}{'yes':<6}{p.sizes:<30}{_fraction(p.load):<16}{survives}")
    lines.append("")
    for p in protocols:
        if p.broken:
            continue
        for what, why in (
            (f"at t + 1 = {t + 1} faulty servers", p.one_more_fault),
            (f"at b + 1 = {b + 1} Byzantine servers", p.one_more_liar),
        ):
            lines.append(f"{p.name} {what}: {'fails' if why else 'still holds'}")
            lines += [f"    {w}" for w in why]
    return lines


def _seed_lines(n: int, f: int) -> list[str]:
    """Seed 001's threshold and grid constructions for ``f`` Byzantine servers."""
    lines = [
        f"seed 001 quorum systems for f = b = {f} Byzantine servers "
        "(Malkhi and Reiter; docs/quorums.md):",
        f"{'class':<15}{'needs':<12}{f'at n={n}':<10}{'quorum':<8}{'load':<16}crashes survived",
    ]
    for kind in th.Kind:
        need = th.min_servers(kind, f)
        q = th.quorum_size(kind, n, f)
        why = th.broken(kind, n, f, q) if n >= need else "too few servers"
        if why is None:
            load = _fraction(th.load(q, n))
            row = f"{'yes':<10}{q:<8}{load:<16}{th.fault_tolerance(q, n)}"
        else:
            row = f"{'no':<10}({why})"
        lines.append(f"{kind.value:<15}{f'n >= {need}':<12}{row}")
    for kind in (th.Kind.MASKING, th.Kind.DISSEMINATION):
        k = grid.grid_min_side(kind, f)
        rows = grid.grid_rows(kind, f)
        q = grid.grid_quorum_size(k, rows)
        lines.append(
            f"{kind.value + ' grid':<19}{f'n = k*k, k >= {k}':<19}smallest n={k * k}: "
            f"quorum {q}, load {_fraction(grid.grid_load(k, rows))}, "
            f"survives {grid.grid_fault_tolerance(k, rows)} crash(es)"
        )
    return lines


def report(t: int, b: int, n: int | None, qc: int | None, m: int | None) -> tuple[bool, str]:
    """(both protocols run, the text ``bftfs quorums`` prints)."""
    if (why := fault_rule(t, b)) is not None:
        return False, why
    n_ = qu_min_servers(t, b) if n is None else n
    if not 1 <= n_ <= MAX_NODES:
        return False, f"n must be in 1..{MAX_NODES} (zfec's fragment limit), got {n_}"
    protocols = [qu_protocol(n_, t, b), pasis_protocol(n_, t, b, qc, m)]
    head = f"n = {n_} servers, up to t = {t} faulty, b = {b} of them Byzantine"
    lines = [head, "", *_protocol_lines(protocols, t, b), "", *_seed_lines(n_, b)]
    return not any(p.broken for p in protocols), "\n".join(lines)


def report_json(
    t: int, b: int, n: int | None, qc: int | None, m: int | None
) -> tuple[bool, dict[str, Any]]:
    """(both protocols run, what ``bftfs quorums --json`` prints): per protocol whether
    it runs, its quorum sizes, load and crashes survived, the rules broken now, at one
    faulty server more and at one Byzantine more; no seed table (prose for a reader)."""
    if (why := fault_rule(t, b)) is not None:
        return False, {"t": t, "b": b, "n": n, "error": why}
    n_ = qu_min_servers(t, b) if n is None else n
    if not 1 <= n_ <= MAX_NODES:
        error = f"n must be in 1..{MAX_NODES} (zfec's fragment limit), got {n_}"
        return False, {"t": t, "b": b, "n": n_, "error": error}
    protocols = [qu_protocol(n_, t, b), pasis_protocol(n_, t, b, qc, m)]
    out = {
        "t": t,
        "b": b,
        "n": n_,
        "protocols": [
            {
                "name": p.name,
                "runs": not p.broken,
                "sizes": p.sizes,
                "quorum": p.quorum or None,
                "load": None if p.broken else float(p.load),
                "crashes_survived": None if p.broken else th.fault_tolerance(p.quorum, p.n),
                "broken": p.broken,
                "at_one_more_fault": p.one_more_fault,
                "at_one_more_byzantine": p.one_more_liar,
            }
            for p in protocols
        ],
    }
    return not any(p.broken for p in protocols), out


def cmd_quorums(args: argparse.Namespace) -> int:
    if args.json:
        ok, data = report_json(args.t, args.b, args.n, args.qc, args.m)
        print(json.dumps(data, indent=2))
    else:
        ok, text = report(args.t, args.b, args.n, args.qc, args.m)
        print(text)
    return 0 if ok else EXIT_CONFIG


def add_quorums(sub: Any) -> None:
    sp = sub.add_parser(
        "quorums",
        help="which protocols t, b, n allow: quorum sizes, load, what fails at t + 1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("--t", type=int, default=1, help="faulty nodes tolerated (default 1)")
    sp.add_argument("--b", type=int, default=1, help="Byzantine nodes among them (default 1)")
    sp.add_argument("--n", type=int, help="nodes (default 3t+2b+1)")
    sp.add_argument("--qc", type=int, help="PASIS QC (default n-t-b)")
    sp.add_argument("--m", type=int, help="PASIS fragments to decode (default QC-t)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_quorums)
