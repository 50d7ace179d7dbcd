"""What a ``submission.py`` run reads, checked before any model loads.

The labelled ``train/`` and ``val/`` splits (one folder per class) and the test folder's images
are listed and every file is decoded once (:func:`dataset.inspect_images`). Nothing odd stops a
run or costs a test row; each oddity is named in a warning on stderr and listed in the report's
``summary.json``:

* an undecodable training or validation image is left out; an undecodable test image is kept
  aside and labelled ``outlier``;
* entries of the test folder that are not visible image files directly in it
  (:func:`dataset.is_image_file`: also one whose name is not valid UTF-8 text) get no row; files
  beside the class folders of train/ and val/, and images there whose name is not valid UTF-8, are
  left out; hidden files and folders are passed over everywhere;
* an image of another size than the models' is resized before its features (which weakens its
  signals), and one that is not RGB is converted to RGB (the models write RGB: it was changed);
* an image whose bytes stand in two splits is named (the splits should be disjoint);
* with ``--labels`` (each image named bare or by its path from the Dataset root,
  :func:`dataset.image_id_of`), test images without a label are not scored, and labels naming no
  test image are reported.

Before that, :func:`check_before_work` refuses a run without ``--test`` or ``--demo``, a
``--device`` this machine has not, and a ``--weights-dir`` missing any weight file of either
family. A missing or empty split folder, a class folder of an unknown name and a malformed labels file
(one naming an image twice included) stop the run at once with a :class:`cli.InputError` naming the path and the fix (one ``error:``
line and status 2 under :func:`cli.run_main`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from cli import InputError, missing_folder, warn

__all__ = ["Inputs", "NO_TEST_NOR_DEMO", "check_before_work", "check_outputs", "check_run_outputs", "input_folders", "converted_images", "gather_inputs", "read_test_labels",
           "resized_images", "test_folder_images"]


NO_TEST_NOR_DEMO = "give --test FOLDER (the images to attribute, labelled train/ and val/ beside it, or --train/--val) or --demo"


def check_before_work(test_dir: Optional[Path], demo: bool, device: str, weights_dir: Optional[Path]) -> None:
    """What ``submission.py`` checks before any work: a :class:`cli.InputError` without a test
    folder or ``--demo``, or for a ``--device`` this machine has not (:func:`cli.check_device`); a
    :class:`models.checkpoints.CheckpointError` for a weight file missing from ``weights_dir``
    (:func:`cli.check_weight_files`: every file of both families, before one family's inverse
    decoder is fine-tuned for hours)."""
    from cli import check_device, check_weight_files

    if test_dir is None and not demo:
        raise InputError(NO_TEST_NOR_DEMO)
    check_device(device)
    check_weight_files(weights_dir)


def input_folders(test: Optional[Path], train: Optional[Path], val: Optional[Path], dataset: Path) -> Tuple[Path, Path, Path]:
    """The test, train and validation folders of a run: ``--test`` (by default the ``test/`` of
    ``--dataset``, the demo's), and ``--train`` / ``--val``, by default beside the test folder."""
    test = test or dataset / "test"
    return test, train or test.parent / "train", val or test.parent / "val"


def check_outputs(out: Path, report_dir: Path, labels: Optional[Path], input_folders: Sequence[Path]) -> None:
    """A :class:`cli.InputError` for outputs that would overwrite or join the inputs: the
    submission written over the labels it is scored against, or the report (its PNG images) written
    into a test, train or validation folder, where the next run would read them as images."""
    if labels is not None and out.resolve() == labels.resolve():
        raise InputError(f"--out {out} is the --labels file: the submission would replace the answers it is scored "
                         "against; give another --out")
    report = report_dir.resolve()
    for folder in input_folders:
        if report == folder.resolve() or folder.resolve() in report.parents:
            raise InputError(f"the report folder {report_dir} is in the input folder {folder}: its images would be "
                             "read as input images by the next run; give another --report-dir (default: <out>_report)")


def check_run_outputs(out: Path, report_dir: Optional[Path], labels: Optional[Path], demo: bool,
                      folders: Sequence[Path], dataset: Path) -> Tuple[Path, Optional[Path]]:
    """``submission.py``'s report folder and scoring labels — ``--report-dir``, by default
    ``<out>_report``; ``--labels``, with ``--demo`` by default the Dataset's hidden
    ``test_labels.csv`` — after the checks the run makes of them before any work: the default
    report folder as :func:`cli.output_folder` checks a given one, then :func:`check_outputs`
    against the input ``folders``. A :class:`cli.InputError` names what is wrong. One home for what
    ``submission.py`` and ``scripts/slurm_submit.py`` (before it submits anything) check."""
    from argparse import ArgumentTypeError

    from cli import output_folder

    if report_dir is None:
        report_dir = out.with_name(out.stem + "_report")
        try:
            output_folder(str(report_dir))
        except ArgumentTypeError as err:
            raise InputError(f"the report folder (default <out>_report; --report-dir to choose another): {err}") from None
    if demo and labels is None:
        labels = dataset / "test_labels.csv"
    check_outputs(out, report_dir, labels, folders)
    return report_dir, labels


def test_folder_images(folder: Path) -> Tuple[List[Path], List[Path]]:
    """The visible image files directly in ``folder`` (:func:`dataset.is_image_file`, sorted), and
    its other entries — subfolders, files of other types, hidden entries (``.DS_Store``,
    ``._x.png``), names that are not valid UTF-8 text — which get no row."""
    from dataset import is_image_file

    entries = sorted(folder.iterdir())
    images = [p for p in entries if is_image_file(p)]
    kept = set(images)  # a test folder may hold many thousands of files
    return images, [p for p in entries if p not in kept]


def _readable_only(meta: pd.DataFrame, inspected: pd.DataFrame, name: str) -> Tuple[pd.DataFrame, List[str]]:
    """The labelled split without the images PIL cannot decode, and those images (named in a warning)."""
    readable = inspected.loc[meta["path"], "readable"].to_numpy(bool)
    dropped = list(meta["path"][~readable])
    if dropped:
        warn(f"{len(dropped)} {name} image(s) cannot be decoded and are left out", dropped)
    if not readable.any():
        raise InputError(f"no {name} image can be decoded; check the files under the {name} folder")
    return meta[readable], dropped


def _labelled_split(root: Path, name: str) -> Tuple[pd.DataFrame, List[str]]:
    """The labelled split in ``root`` and its entries left out (:func:`dataset.read_split`)."""
    from dataset import read_split

    if not root.is_dir():
        raise InputError(f"{root}: no {name} folder; give --{name} DIR (one subfolder of images per class) "
                         f"or put {name}/ beside the test folder")
    try:
        frame, left_out = read_split(root.parent, root.name)
    except InputError as err:  # a class folder with an unknown name, a malformed <split>_meta.csv
        raise InputError(f"--{name}: {err}") from None
    if frame.empty:
        raise InputError(f"{root}: no images; expected {root}/<class>/*.png")
    if frame["label"].isna().any():
        raise InputError(f"{root}: the {name} split must be labelled by class folders")
    return frame, left_out


@dataclass
class Inputs:
    """What a run reads, each file decoded once (:func:`gather_inputs`)."""

    train: pd.DataFrame  # the labelled splits (dataset.list_split), undecodable images left out
    val: pd.DataFrame
    test_paths: List[Path]  # every test image file: one row each in submission.csv
    test_readable: List[Path]
    test_unreadable: List[Path]  # labelled ``outlier``
    inspected: pd.DataFrame  # dataset.inspect_images of all of them (sha256, readable, size, mode)
    notes: Dict[str, List[str]]  # the files named in warnings, for the report's summary


def gather_inputs(test_dir: Path, train_dir: Path, val_dir: Path) -> Inputs:
    """The labelled splits and the test images, each file decoded once: undecodable training and
    validation images are left out, undecodable test images kept aside (they become ``outlier``),
    entries of the test folder that are not images skipped; each such file is named in a warning
    (shown by :func:`dataset.shown_path`)."""
    from dataset import IMAGE_SUFFIXES, inspect_images, shown_path

    problem = missing_folder(test_dir, "give --test DIR, the folder of images to attribute")
    if problem:
        raise InputError(problem)
    test_paths, skipped = test_folder_images(test_dir)
    if not test_paths:
        raise InputError(f"{test_dir}: no test images found ({', '.join(IMAGE_SUFFIXES)} files directly in the folder)")
    skipped_shown = [shown_path(p) for p in skipped]
    if skipped:
        warn(f"{len(skipped)} entries of {shown_path(test_dir)} are not visible image files directly in it (or their "
             "names are not valid UTF-8 text) and get no row", skipped_shown)
    (train_meta, train_left_out), (val_meta, val_left_out) = _labelled_split(train_dir, "train"), _labelled_split(val_dir, "val")
    inspected = inspect_images(list(train_meta["path"]) + list(val_meta["path"]) + [str(p) for p in test_paths])
    inspected = inspected[~inspected.index.duplicated()]
    (train_meta, train_dropped), (val_meta, val_dropped) = (_readable_only(train_meta, inspected, "train"),
                                                            _readable_only(val_meta, inspected, "val"))
    good = [p for p in test_paths if inspected.loc[str(p), "readable"]]
    bad = [p for p in test_paths if not inspected.loc[str(p), "readable"]]
    if bad:
        warn(f"{len(bad)} test image(s) cannot be decoded and are labelled 'outlier'", bad)
    notes = {"unreadable_test_images": [str(p) for p in bad], "skipped_test_entries": skipped_shown,
             "skipped_labelled_entries": train_left_out + val_left_out, "unreadable_labelled_images": train_dropped + val_dropped,
             "images_in_two_splits": _shared_across_splits(inspected, train_meta["path"], val_meta["path"], good)}
    return Inputs(train_meta, val_meta, test_paths, good, bad, inspected, notes)


def _shared_across_splits(inspected: pd.DataFrame, train_paths: Sequence, val_paths: Sequence,
                          test_paths: Sequence) -> List[str]:
    """Files whose bytes also stand in an earlier split (train, then val, then test), named in a
    warning: scores on them say nothing about unseen images, and the splits should be disjoint."""
    first_split: Dict[str, str] = {}
    shared: List[str] = []
    for split, paths in (("train", train_paths), ("val", val_paths), ("test", test_paths)):
        for path in paths:
            digest = inspected.loc[str(path), "sha256"]
            if first_split.setdefault(digest, split) != split:
                shared.append(f"{path} (= a {first_split[digest]} image)")
    if shared:
        warn(f"{len(shared)} image(s) are byte-identical to an image of another split; keep train, val and test "
              "disjoint", shared)
    return shared


def read_test_labels(path: Path, test_paths: List[Path]) -> pd.Series:
    """The known labels of the test images (to score the submission) by file name, read before any
    model runs: each image named bare or by its path from the Dataset root (``test/x.png``, the
    test folder's name first: :func:`dataset.image_id_of`). A malformed file, or one naming an image
    twice, stops the run here; test images without a label, and labels of images that are not in
    the test folder, are named in a warning and left out of the score."""
    from dataset import check_unique, image_id_of, read_label_csv

    split = test_paths[0].parent.name if test_paths else "test"
    try:
        frame = read_label_csv(path)
        written = list(frame["image_name"].astype(str))
        ids = [image_id_of(name, split) for name in written]
        check_unique(path, ids)
    except (OSError, ValueError) as err:  # InputError and pandas' ParserError are ValueErrors
        raise InputError(f"--labels: {err}") from None
    truth = pd.Series(frame["label"].to_numpy(), index=ids)
    names = {image_id_of(p.name, split): p.name for p in test_paths}
    unlabelled = [name for image_id, name in names.items() if image_id not in truth.index]
    unknown = sorted(name for name, image_id in zip(written, ids) if image_id not in names)
    if unlabelled:
        warn(f"{len(unlabelled)} test image(s) have no label in {path} and are not scored", unlabelled)
    if unknown:
        warn(f"{len(unknown)} label(s) in {path} name no image of the test folder", unknown)
    known = [image_id for image_id in names if image_id in truth.index]
    return pd.Series(truth.loc[known].to_numpy(), index=pd.Index([names[i] for i in known], name="image_name"), name="label")


def converted_images(inspected: pd.DataFrame) -> List[str]:
    """The readable images that are not RGB (grayscale, palette, with alpha, 16-bit; named in a
    warning): they are converted to RGB first. The models write RGB, so such a file was changed
    after it was made."""
    other = inspected[inspected["readable"].to_numpy(bool) & (inspected["mode"] != "RGB").to_numpy(bool)]
    if len(other):
        warn(f"{len(other)} image(s) are not RGB; they are converted to RGB first (an alpha channel is dropped), and "
             "the models write RGB, so these files were changed after they were made",
             [f"{path} ({mode})" for path, mode in other["mode"].items()])
    return list(other.index)


def resized_images(inspected: pd.DataFrame, size: int) -> List[str]:
    """The readable images that are not ``size``×``size`` (named in a warning): they are resized."""
    resized = inspected[inspected["readable"] & ((inspected["width"] != size) | (inspected["height"] != size))]
    if len(resized):
        warn(f"{len(resized)} image(s) are not {size}×{size}, the models' input size; they are resized (bicubic) "
              "first, and resampling weakens the provenance signals",
              [f"{path} ({w}×{h})" for path, w, h in resized[["width", "height"]].itertuples()])
    return list(resized.index)
