"""`bftfs group move` (placeholder replaced on merge)."""

import argparse


def add_move_parser(actions: argparse._SubParsersAction) -> None:
    actions.add_parser("move", help="copy what a grown layout moves (the partition mover)")


def run_move(args: argparse.Namespace) -> int:
    raise SystemExit("not in this branch")
