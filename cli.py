"""Command-line entry points: a user's mistake ends in one line, not a traceback.

Every command that loads weights (``--weights-dir``) or reads feature files runs its ``main``
through :func:`run_main`. A :class:`models.checkpoints.CheckpointError` — a weight folder or file
missing, unreadable, or not the architecture it should be — and a ``FileNotFoundError`` — an
input path that does not exist — are printed as ``error: …`` (the message names the file and
what to check) and the command exits with status 2, as argparse does for a bad option. Every
other exception is a bug and keeps its traceback.

:func:`at_least` is the argparse type of count options (``--batch-size 0`` is refused at once,
not after the feature pass); :func:`add_weights_arguments` and :func:`add_scored_split_arguments`
give the commands their common options (which weights and inverse decoders; which labelled split
of which Dataset); :func:`warn` names files in one line on stderr; :func:`folder_images` gives the
commands that read a folder the images in it that can be decoded, naming the others.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from models.checkpoints import CheckpointError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["run_main", "warn", "readable_folder_images", "folder_images", "at_least", "shard_spec", "add_weights_arguments",
           "add_scored_split_arguments", "USER_ERROR_STATUS"]

USER_ERROR_STATUS = 2


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)``, with weight-file errors and missing inputs turned into one line on stderr and status 2."""
    try:
        return main(argv)
    except (CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_STATUS


def warn(message: str, items: Sequence, show: int = 5) -> None:
    """One line on stderr: ``warning: message: `` and the first ``show`` items."""
    listed = ", ".join(str(item) for item in items[:show]) + (f", … ({len(items) - show} more)" if len(items) > show else "")
    print(f"warning: {message}: {listed}", file=sys.stderr)


def readable_folder_images(folder: Path) -> "pd.DataFrame":
    """:func:`dataset.inspect_images` of the images below ``folder`` (recursively, sorted) that can
    be decoded — indexed by path, with each file's ``sha256`` — the others named in a warning and
    left out. Ends the command with status 2 when none is left."""
    from dataset import images_under, inspect_images

    paths = images_under(folder)
    inspected = inspect_images(paths) if paths else None
    undecodable = [] if inspected is None else list(inspected.index[~inspected["readable"].to_numpy(bool)])
    if undecodable:
        warn(f"{len(undecodable)} image(s) under {folder} cannot be decoded and are left out", undecodable)
    if inspected is None or len(undecodable) == len(inspected):
        print(f"error: no decodable images under {folder}", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS)
    return inspected[inspected["readable"].to_numpy(bool)]


def folder_images(folder: Path) -> List[Path]:
    """The images below ``folder`` that can be decoded (:func:`readable_folder_images`)."""
    return [Path(p) for p in readable_folder_images(folder).index]


def add_weights_arguments(parser: argparse.ArgumentParser, root: Optional[Path] = None) -> None:
    """``--weights-dir`` and ``--inv-root`` of the commands that map images back with an inverse
    decoder; ``--inv-root`` defaults to ``runs/inv_decoder`` under the repository folder ``root``
    (scripts) or under the working directory (``root`` None: the top-level commands)."""
    parser.add_argument("--weights-dir", type=Path, help="official checkpoints or a zoo folder (default: the demo zoo)")
    inv_root = Path("runs") / "inv_decoder"
    shown = "the repository's runs/inv_decoder" if root is not None else "runs/inv_decoder"
    parser.add_argument("--inv-root", type=Path, default=root / inv_root if root is not None else inv_root,
                        help=f"where inverse decoders not shipped with the weights live, fine-tuned there if missing (default: {shown})")


def add_scored_split_arguments(parser: argparse.ArgumentParser, root: Path) -> None:
    """``--dataset``, ``--split`` and :func:`add_weights_arguments`' two of the scripts that score a
    labelled split of a Dataset (defaults under the repository folder ``root``)."""
    parser.add_argument("--dataset", type=Path, default=root / "Dataset", help="Dataset root (default: the repository's Dataset)")
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="split scored; its labels are needed (test: Dataset/test_labels.csv) (default %(default)s)")
    add_weights_arguments(parser, root)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer no smaller than ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {minimum}"
    return parse


def shard_spec(text: str) -> Tuple[int, int]:
    """An argparse ``type``: ``K/N``, shard ``K`` (counted from 0) of ``N`` — what a Slurm array task
    gets as ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected K/N (shard K of N, K from 0), got {text!r}")
    index_, count_ = int(index), int(count)
    if count_ < 1 or index_ >= count_:
        raise argparse.ArgumentTypeError(f"shard {index_} of {count_} does not exist: K runs from 0 to N-1")
    return index_, count_
