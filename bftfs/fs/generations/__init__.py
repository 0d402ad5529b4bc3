"""A mount across generations (issue 35; docs/membership.md, "Generations").

- :mod:`.routers`: the Q/U and PASIS routers over two generations while objects move
  (:class:`GenerationalQU`, :class:`GenerationalRW`), and the wait for the old one's freeze;
- :mod:`.clients`: a session's clients of each generation it spans (:class:`Generations`);
- :mod:`.mover`: the background mover of everything left in the old generation.
"""

from bftfs.fs.generations.clients import Generations, GenerationStack
from bftfs.fs.generations.mover import (
    MoveError,
    MoveState,
    cursor_path,
    file_blocks,
    list_page,
    move_generation,
    start_state,
    union_page,
)
from bftfs.fs.generations.routers import (
    NOT_SEEN,
    GenerationalQU,
    GenerationalRW,
    frozen_needed,
    wait_answering,
    wait_frozen,
)

__all__ = [
    "NOT_SEEN",
    "GenerationStack",
    "GenerationalQU",
    "GenerationalRW",
    "Generations",
    "MoveError",
    "MoveState",
    "cursor_path",
    "file_blocks",
    "frozen_needed",
    "list_page",
    "move_generation",
    "start_state",
    "union_page",
    "wait_answering",
    "wait_frozen",
]
