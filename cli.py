"""Command-line entry points: a user's mistake ends in one line, not a traceback.

Every command that loads weights (``--weights-dir``) or reads feature files runs its ``main``
through :func:`run_main`. A :class:`models.checkpoints.CheckpointError` — a weight folder or file
missing, unreadable, or not the architecture it should be — and a ``FileNotFoundError`` — an
input path that does not exist — are printed as ``error: …`` (the message names the file and
what to check) and the command exits with status 2, as argparse does for a bad option. Every
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from models.checkpoints import CheckpointError

__all__ = ["run_main", "USER_ERROR_STATUS"]

USER_ERROR_STATUS = 2


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)``, with weight-file errors and missing inputs turned into one line on stderr and status 2."""
    try:
        return main(argv)
    except (CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_STATUS
