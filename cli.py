"""Command-line entry points: a user's mistake ends in one line, not a traceback.

Every command that loads weights (``--weights-dir``) or reads feature files runs its ``main``
through :func:`run_main`; a top-level module's command does so through :func:`run_module`, which
runs the module as imported by its name, so what it saves (a gate, a classifier) is pickled under
``provenance.LearnedGate`` and not ``__main__.LearnedGate``, which no other program could load.
A :class:`models.checkpoints.CheckpointError` — a weight folder or file missing, unreadable, or not the architecture it should be —, an :class:`InputError` — an input
file or folder that cannot be used (a malformed labels CSV, features and labels that disagree, a
missing split folder, a ``--device`` this machine has not) — and a ``FileNotFoundError`` — an
input path that does not exist — are printed as ``error: …`` (the message names the file and
what to check) and the command exits with status 2, as argparse does for a bad option. Every
other exception is a bug and keeps its traceback.

Checks made before any model loads: :func:`check_weight_files` (every file of both families, so
a folder missing one file fails at once, not after hours of fine-tuning the other family's
inverse decoder) and :func:`check_device`.

:func:`at_least` is the argparse type of count options (``--batch-size 0`` is refused at once,
not after the feature pass), :func:`existing_folder` that of input folders, :func:`output_file` and :func:`output_folder` those of output paths (a
folder given for a file, a file for a folder, or a place this user cannot write in is refused
before any work; a missing parent folder is made when the output is written); :func:`add_weights_arguments` and :func:`add_scored_split_arguments`
give the commands their common options (which weights, inverse decoders and variant nets — by
default where ``submission.py`` keeps them, ``cache/inv_decoder`` and ``cache/variant_net``;
which labelled split of which Dataset); :func:`warn` names files in one line on stderr;
:func:`folder_images` gives the commands that read a folder the images in it that can be
decoded, naming the others.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["run_main", "run_module", "InputError", "warn", "readable_folder_images", "decodable_images", "folder_images", "at_least", "shard_spec",
           "missing_folder", "existing_folder", "output_file", "output_file_with", "output_folder", "positive_float",
           "add_weights_arguments", "add_scored_split_arguments", "scored_split", "required_weight_files", "check_weight_files",
           "chosen_device", "check_device", "USER_ERROR_STATUS", "CACHE_DIR", "INV_DECODER_DIR", "INV_DECODER_MAX_IMAGES", "VARIANT_NET_DIR"]

USER_ERROR_STATUS = 2
# submission.py's layout: <--cache-dir>/inv_decoder/<FAMILY>/ and <--cache-dir>/variant_net/<FAMILY>/;
# every command that fine-tunes or reads them defaults to the same folders
CACHE_DIR = Path("cache")
INV_DECODER_DIR = "inv_decoder"
INV_DECODER_MAX_IMAGES = 100_000  # inv_decoder.MAX_IMAGES: here, so submission.py's parser checks it before loading torch
VARIANT_NET_DIR = "variant_net"


class InputError(ValueError):
    """An input file or folder that cannot be used; the message names it and the fix.
    :func:`run_main` prints it as one ``error:`` line and exits with status 2."""


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)``, with weight-file errors, bad inputs and missing inputs turned into one line on stderr and status 2."""
    from models.checkpoints import CheckpointError  # here, not at the top: importing cli loads no torch

    try:
        return main(argv)
    except (CheckpointError, InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_STATUS


def run_module(name: str) -> int:
    """:func:`run_main` of the ``main`` of the module ``name``, imported as such: the entry point of
    ``python name.py``. Run as a script, a module is ``__main__``, and the classes it pickles would
    be recorded as ``__main__.…`` (loadable only by that script)."""
    import importlib

    return run_main(importlib.import_module(name).main)


def warn(message: str, items: Sequence, show: int = 5) -> None:
    """One line on stderr: ``warning: message: `` and the first ``show`` items."""
    listed = ", ".join(str(item) for item in items[:show]) + (f", … ({len(items) - show} more)" if len(items) > show else "")
    print(f"warning: {message}: {listed}", file=sys.stderr)


def readable_folder_images(folder: Path) -> "pd.DataFrame":
    """:func:`dataset.inspect_images` of the images below ``folder`` (recursively, sorted) that can
    be decoded — indexed by path, with each file's ``sha256`` — the others named in a warning and
    left out. Ends the command with status 2 when none is left."""
    from dataset import images_under

    problem = missing_folder(folder, "give a folder of images")
    if problem:
        raise InputError(problem)
    readable = decodable_images(images_under(folder), f"under {folder} ")
    if not len(readable):
        print(f"error: no decodable images under {folder}", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS)
    return readable


def decodable_images(paths: Sequence[Path | str], where: str = "") -> "pd.DataFrame":
    """:func:`dataset.inspect_images` of those of ``paths`` that can be decoded (in their order); the
    others are named in a warning (``where`` says where they are, e.g. ``"under Dataset/val "``)."""
    from dataset import inspect_images

    inspected = inspect_images(paths)
    readable = inspected["readable"].to_numpy(bool)
    if not readable.all():
        warn(f"{int((~readable).sum())} image(s) {where}cannot be decoded and are left out", list(inspected.index[~readable]))
    return inspected[readable]


def folder_images(folder: Path) -> List[Path]:
    """The images below ``folder`` that can be decoded (:func:`readable_folder_images`)."""
    return [Path(p) for p in readable_folder_images(folder).index]


def add_weights_arguments(parser: argparse.ArgumentParser, root: Optional[Path] = None, nets: bool = False) -> None:
    """``--weights-dir`` and ``--inv-root`` (and, with ``nets``, ``--net-root``) of the commands that
    map images back with an inverse decoder; the roots default to ``submission.py``'s
    (``cache/inv_decoder``, ``cache/variant_net``: :data:`CACHE_DIR`) under the repository folder
    ``root`` (scripts) or under the working directory (``root`` None: the top-level commands)."""
    parser.add_argument("--weights-dir", type=Path, help="official checkpoints or a zoo folder (default: the demo zoo)")
    cache = root / CACHE_DIR if root is not None else CACHE_DIR
    where = "the repository's " if root is not None else ""
    parser.add_argument("--inv-root", type=Path, default=cache / INV_DECODER_DIR,
                        help="where inverse decoders not shipped with the weights live, fine-tuned there if missing "
                             f"(default: {where}{CACHE_DIR / INV_DECODER_DIR}, as submission.py's --cache-dir {CACHE_DIR})")
    if nets:
        parser.add_argument("--net-root", type=Path, default=cache / VARIANT_NET_DIR,
                            help="where variant nets not shipped with the weights live, trained there if missing "
                                 f"(default: {where}{CACHE_DIR / VARIANT_NET_DIR}, as submission.py's --cache-dir {CACHE_DIR})")


def required_weight_files(weights_dir: Optional[Path | str], families: Optional[Sequence[str]] = None) -> List[Path]:
    """Every tokenizer and generator file of ``families`` (default both) that a run with
    ``weights_dir`` (the demo zoo for ``None``) loads (:func:`models.zoo.family_files`): the files
    its ``zoo.json`` names, or the official file names. A :class:`CheckpointError` if
    ``weights_dir`` is not a folder, or its ``zoo.json`` lacks a family."""
    from models.checkpoints import CheckpointError
    from models.registry import FAMILIES
    from models.zoo import check_weights_dir, family_files

    folder = check_weights_dir(weights_dir)
    files: List[Path] = []
    absent = []
    for family in families or FAMILIES:
        try:
            files += family_files(family, weights_dir)
        except KeyError:  # a zoo.json without the family
            absent.append(family)
    if absent:
        raise CheckpointError(f"{folder / 'zoo.json'} has no family {', '.join(absent)}; a run needs "
                              + ("both VAR and RAR" if not families else " and ".join(families)))
    return list(dict.fromkeys(files))


def check_weight_files(weights_dir: Optional[Path | str], families: Optional[Sequence[str]] = None) -> None:
    """A :class:`CheckpointError` naming every file of :func:`required_weight_files` (of
    ``families``, default both) that is missing, else the first that cannot be read or does not fit
    its model (:func:`models.zoo.check_family_weights`: keys and shapes, no tensor read) — checked
    up front, so a folder missing one family's file, or holding a damaged or wrong one, does not
    first fine-tune the other family's inverse decoder for hours."""
    from models.checkpoints import CheckpointError
    from models.registry import FAMILIES
    from models.zoo import check_family_weights

    needed = required_weight_files(weights_dir, families)
    missing = [path for path in needed if not path.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more ({', '.join(p.name for p in missing[1:])})" if len(missing) > 1 else ""
        raise CheckpointError(f"weight file not found: {missing[0]}{more}; a run needs all {len(needed)} files of "
                              + ("both families" if not families else " and ".join(families))
                              + " (check --weights-dir and the file names)")
    for family in families or FAMILIES:  # each file read as far as its keys and shapes, against its model
        check_family_weights(family, weights_dir)


def chosen_device(name: str) -> str:
    """:func:`check_device` of ``name``, ``auto`` taken as ``cuda`` where torch sees a GPU, else ``cpu``
    (the ``--device`` of the commands whose default is ``auto``)."""
    if name == "auto":
        import torch

        name = "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(name)


def check_device(name: str) -> str:
    """``name`` if torch can run models on that device on this machine; else an :class:`InputError`
    saying why (``gpu`` is no torch device; ``cuda`` needs a CUDA build of torch and a GPU)."""
    if name == "cpu":
        return name  # no torch import: --help and the input checks stay fast
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name}: not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
            raise InputError(f"--device {name}: this torch {torch.__version__} cannot use CUDA ({build}); "
                             "use --device cpu, or run where a CUDA build of torch sees a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: not supported; use cpu or cuda")
    return name


def add_scored_split_arguments(parser: argparse.ArgumentParser, root: Path) -> None:
    """``--dataset``, ``--split`` and :func:`add_weights_arguments`' two of the scripts that score a
    labelled split of a Dataset (defaults under the repository folder ``root``)."""
    parser.add_argument("--dataset", type=Path, default=root / "Dataset", help="Dataset root (default: the repository's Dataset)")
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="split scored; its labels are needed (test: Dataset/test_labels.csv) (default %(default)s)")
    add_weights_arguments(parser, root)


def scored_split(dataset: Path, split: str) -> "pd.DataFrame":
    """:func:`dataset.list_split` of ``dataset``'s ``split``, the images that cannot be decoded named
    in a warning and left out (what the scripts of :func:`add_scored_split_arguments` score)."""
    from dataset import list_split

    meta = list_split(dataset, split)
    readable = decodable_images(list(meta["path"]), f"under {dataset / split} ")
    return meta[meta["path"].isin(readable.index)]


def at_least(minimum: int, at_most: Optional[int] = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer no smaller than ``minimum`` (and, given ``at_most``, no larger):
    refused by the parser itself, so every caller of a shared parser (``scripts/slurm_submit.py``
    parses ``submission.py``'s) refuses it too."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"at most {at_most:,}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {minimum}" if at_most is None else f"integer in {minimum} … {at_most}"
    return parse


def _check_writable_place(path: Path) -> None:
    """An :class:`argparse.ArgumentTypeError` unless ``path`` (a folder, existing or to be made) can be
    written: its nearest existing folder must be a folder this user can write in."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {existing} (permission denied); choose another place")
    try:  # os.access says yes to root everywhere, /proc and read-only mounts included: ask the filesystem
        tempfile.TemporaryFile(dir=existing).close()  # unnamed where the filesystem allows, removed at once otherwise
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write in {existing} ({err.strerror or err}); choose another place") from None


def missing_folder(folder: Path, hint: str) -> Optional[str]:
    """``None`` if ``folder`` is a folder, else the one line that says it is not and what to give
    instead (``hint``), and whether the path is a file."""
    if folder.is_dir():
        return None
    return f"{folder}: no such folder; {hint}" + (" (this is a file)" if folder.exists() else "")


def existing_folder(hint: str) -> Callable[[str], Path]:
    """An argparse ``type``: a folder that must exist (a typo in an input folder is refused at once,
    not after the work, nor — for a folder a check reads — by silently checking nothing); ``hint``
    says what to give instead."""
    def parse(text: str) -> Path:
        path = Path(text)
        problem = missing_folder(path, hint)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return path

    parse.__name__ = "folder"
    return parse


def output_file(text: str, suffixes: Sequence[str] = ()) -> Path:
    """An argparse ``type``: a file to write (not an existing folder, in a place that can be written,
    with one of ``suffixes`` when given); its folder is made when it is written."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name (e.g. {path / 'out'}{suffixes[0] if suffixes else ''})")
    if suffixes and path.suffix.lower() not in suffixes:
        raise argparse.ArgumentTypeError(f"{text}: expected a name ending in one of {', '.join(suffixes)}")
    _check_writable_place(path.parent)
    return path


def output_folder(text: str) -> Path:
    """An argparse ``type``: a folder to write in (not an existing file, in a place that can be
    written); made when the command writes to it."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    _check_writable_place(path)
    return path


def output_file_with(*suffixes: str) -> Callable[[str], Path]:
    """:func:`output_file` of one of ``suffixes`` (lower case, with the dot)."""
    def parse(text: str) -> Path:
        return output_file(text, suffixes)

    parse.__name__ = "output file"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number above 0 (a learning rate, a strength)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


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
