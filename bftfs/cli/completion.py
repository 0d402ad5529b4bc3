"""``bftfs completion bash|zsh``: the shell code that completes ``bftfs`` commands, actions
and options on Tab (argcomplete), to source from a shell's start-up file::

    eval "$(bftfs completion bash)"     # ~/.bashrc
    eval "$(bftfs completion zsh)"      # ~/.zshrc

The shell then runs ``bftfs`` with argcomplete's environment variables set on each Tab;
:func:`bftfs.cli.main.main` answers those runs from the same parser ``--help`` prints,
so completion knows every subcommand, action and option there is.
"""

from __future__ import annotations

import argparse
from typing import Any

#: The shells argcomplete writes code for that ``bftfs completion`` offers.
SHELLS = ("bash", "zsh")


def completion_script(shell: str) -> str:
    """The code to source in ``shell`` for Tab completion of ``bftfs``."""
    import argcomplete

    return str(argcomplete.shellcode(["bftfs"], shell=shell))


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(args.shell), end="")
    return 0


def add_completion(sub: Any) -> None:
    """``bftfs completion``."""
    sp = sub.add_parser(
        "completion",
        help='print the shell code for Tab completion (eval "$(bftfs completion bash)")',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    sp.set_defaults(func=cmd_completion)
