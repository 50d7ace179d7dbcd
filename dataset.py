"""Reading the Dataset layout: ``train/<class>/``, ``val/<class>/``, ``test/*.png`` (+ hidden labels).

Every split is listed as a pandas frame indexed by ``image_id`` (the path relative to the
Dataset root, e.g. ``train/var16/img_00012.png``, so ids are unique across splits) with columns
``path``, ``label`` (one of :data:`models.registry.CLASS_NAMES`, or ``None`` for unlabeled test
images) and ``source`` (what made the image — the variant, ``natural`` or ``outlier_iar`` — where
a sidecar ``<split>_meta.csv`` or the hidden ``test_labels.csv`` says so, else the label).
Images load as float tensors in ``[0, 1]``, ``B×3×H×W``.

Every listing reads the files that :func:`is_image_file` accepts — visible (hidden files and
hidden folders such as ``._x.png`` or ``.ipynb_checkpoints/`` are passed over), of an image
suffix, with a path that is valid UTF-8 text (an image whose name is not is left out and named in a
warning, shown by :func:`shown_path`). A labels CSV names an image bare (``x.png``) or by its path
from the Dataset root (``test/x.png``): :func:`image_id_of` is the one reading of both.

A file or folder that cannot be used — a labels CSV that does not parse, lacks its columns or
names an image twice, features and labels that disagree, a class folder of an unknown name —
raises :class:`cli.InputError` (a ``ValueError``) naming it: one ``error:`` line under
:func:`cli.run_main`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from cli import InputError, warn
from models.registry import CLASS_NAMES

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "REPORT_DIR", "csv_quoting", "list_split", "read_split", "load_images", "inspect_images", "rgb_image", "pixel_hashes_under", "read_label_csv",
           "read_feature_frame", "read_labelled_features", "add_labelled_split_arguments", "images_under", "is_image_file",
           "shown_path", "image_id_of", "check_unique"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# where ``submission.py`` leaves each split's feature frame and labels (``--report-dir``)
REPORT_DIR = Path("submission_report")


def shown_path(path: Path | str) -> str:
    """``path`` as text that any CSV, JSON file or terminal takes: a byte of a name that is not
    valid UTF-8 (legal on POSIX, e.g. Latin-1 ``caf\\xe9.png``) shows as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _text_path(path: Path) -> bool:
    """Whether ``path`` is valid UTF-8 text: one that is not reads with surrogates, which no frame or CSV can hold."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _looks_like_image(path: Path) -> bool:
    """A visible (no leading ``.``: not ``._x.png``, not ``.DS_Store``) regular file of an image suffix."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def is_image_file(path: Path) -> bool:
    """The one rule of every listing (:func:`list_split`, :func:`images_under`,
    :func:`run_inputs.test_folder_images`): a visible regular file of an image suffix whose path is
    valid UTF-8 text."""
    return _looks_like_image(path) and _text_path(path)


def _image_files(paths: Iterable[Path], where: str) -> Tuple[List[Path], List[str]]:
    """The image files among ``paths`` (:func:`is_image_file`, sorted), and those that only a path
    that is not valid UTF-8 keeps out, shown by :func:`shown_path` and named in a warning."""
    images, misnamed = [], []
    for path in sorted(paths):
        if is_image_file(path):
            images.append(path)
        elif _looks_like_image(path):
            misnamed.append(path)
    shown = [shown_path(p) for p in misnamed]
    if shown:
        warn(f"{len(shown)} image file(s) {where} have a path that is not valid UTF-8 text and are left out; rename them",
             shown)
    return images, shown


def _not_images(folder: Path, entries: List[Path], images: List[Path], misnamed: List[str]) -> List[str]:
    """The visible ``entries`` of ``folder`` that are neither among its ``images`` nor ``misnamed``
    (subfolders, which are not searched, and files of other types), shown by :func:`shown_path`
    and named in a warning: a labelled split leaves nothing out unsaid."""
    listed = set(images) | set(misnamed)
    others = [shown_path(p) for p in sorted(entries)
              if not p.name.startswith(".") and p not in listed and shown_path(p) not in listed]
    if others:
        warn(f"{len(others)} entr{'y' if len(others) == 1 else 'ies'} in {shown_path(folder)} are not image files "
             "(subfolders are not searched) and are left out", others)
    return others


def image_id_of(name: str, split: str, label: Optional[str] = None) -> str:
    """The image id (``<split>/[<label>/]<file name>``) that a labels CSV's ``image_name`` names in
    ``split``: the name as written when it is the path from the Dataset root (``test/x.png``), else
    the bare file name under ``<split>/`` — under ``<split>/<label>/`` for a split of class folders."""
    if name.startswith(f"{split}/"):
        return name
    return f"{split}/{name}" if label is None else f"{split}/{label}/{name}"


def csv_quoting(names: Iterable[str]) -> int:
    """The ``csv`` quoting for a file of image ``names``: every field quoted when a name holds a line
    break or a carriage return (both legal on POSIX; the ``csv`` module leaves a lone ``\\r``
    unquoted, which readers take for a row's end), else only where needed."""
    import csv

    return csv.QUOTE_ALL if any("\r" in name or "\n" in name for name in names) else csv.QUOTE_MINIMAL


def check_unique(path: Path | str, names: Sequence[str]) -> None:
    """A :class:`cli.InputError` naming ``path`` and a few of ``names`` that stand more than once:
    one row per image, so no two rows can disagree on its label."""
    repeated = pd.Index(names)[pd.Index(names).duplicated()].unique()
    if len(repeated):
        shown = ", ".join(str(n) for n in repeated[:3]) + (", …" if len(repeated) > 3 else "")
        raise InputError(f"{path}: {len(repeated)} image name(s) on more than one row ({shown}); keep one row per image")


def read_label_csv(path: Path | str, unique: bool = True) -> pd.DataFrame:
    """A CSV with ``image_name,label`` (+ optional columns), validated (:class:`cli.InputError` if
    not): with ``unique``, no image name on two rows (:func:`check_unique`; a ``<split>_meta.csv``
    of class folders may name ``x.png`` in two of them, and :func:`list_split` checks its ids)."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a CSV file of image_name,label ({type(err).__name__}: {str(err).strip()})") from None
    missing = {"image_name", "label"} - set(frame.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)}; expected image_name,label")
    unknown = sorted(set(frame["label"]) - set(CLASS_NAMES), key=str)
    if unknown:
        raise InputError(f"{path}: unknown label(s) {unknown}; expected one of {', '.join(CLASS_NAMES)}")
    if unique:
        check_unique(path, list(frame["image_name"].astype(str)))
    return frame


def read_feature_frame(path: Path | str) -> pd.DataFrame:
    """A feature frame (``.parquet`` or ``.csv``, first column the image id) as written by
    ``submission.py`` or ``feature_extractor.py`` — or a per-token frame ``tokens_<split>.parquet``,
    which ``submission.py --method prada`` leaves in its report folder."""
    path = Path(path)
    if not path.is_file():
        if path.name.startswith("tokens_"):
            hint = (f"`python submission.py --demo --method prada` writes {REPORT_DIR}/tokens_{{train,val,test}}.parquet "
                    "(the other methods write no per-token frames)")
        else:
            hint = (f"`python submission.py --demo` writes {REPORT_DIR}/features_{{train,val,test}}.parquet, "
                    "`python feature_extractor.py FOLDER --out FILE` any other")
        kind = "per-token" if path.name.startswith("tokens_") else "feature"
        raise FileNotFoundError(f"{path}: no such {kind} file; {hint}")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, index_col=0)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, pandas' ParserError too
        raise InputError(f"{path}: not a feature frame ({type(err).__name__}: {err})") from None


def read_labelled_features(features_path: Path | str, labels_path: Path | str) -> tuple[pd.DataFrame, np.ndarray]:
    """A feature frame and its labels (a CSV ``image_name,label``), rows in the same order.

    Every image of the frame must have a label; labelled images without features are an error too,
    so a stale labels file is caught instead of silently scoring a subset.
    """
    features = read_feature_frame(features_path)
    labels = read_label_csv(labels_path).set_index("image_name")["label"]
    missing = features.index.difference(labels.index)
    extra = labels.index.difference(features.index)
    if len(missing) or len(extra):
        example = (list(missing) or list(extra))[0]
        raise InputError(f"{features_path} and {labels_path} disagree: {len(missing)} image(s) without a label, "
                         f"{len(extra)} label(s) without features (e.g. {example}); regenerate both with the same run")
    return features, labels.reindex(features.index).to_numpy()


def add_labelled_split_arguments(parser: argparse.ArgumentParser, splits: Iterable[str] = ("train", "val")) -> None:
    """``--{split}-features`` / ``--{split}-labels`` options, defaulting to what ``submission.py`` wrote."""
    for split in splits:
        parser.add_argument(f"--{split}-features", type=Path, default=REPORT_DIR / f"features_{split}.parquet",
                            help=f"{split} feature frame (default: %(default)s)")
        parser.add_argument(f"--{split}-labels", type=Path, default=REPORT_DIR / f"labels_{split}.csv",
                            help=f"{split} labels, CSV image_name,label (default: %(default)s)")


def images_under(folder: Path | str) -> list:
    """Every image file below ``folder`` (recursively, :func:`is_image_file`; hidden folders such
    as ``.ipynb_checkpoints`` are not entered), sorted: what the folder commands read."""
    found: List[Path] = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(parent) / name for name in files]
    return _image_files(found, f"under {shown_path(folder)}")[0]


def list_split(root: Path | str, split: str, labels_csv: Optional[Path | str] = None) -> pd.DataFrame:
    """All images of ``split`` under ``root`` with their labels and sources (:func:`read_split`)."""
    return read_split(root, split, labels_csv)[0]


def read_split(root: Path | str, split: str, labels_csv: Optional[Path | str] = None) -> Tuple[pd.DataFrame, List[str]]:
    """:func:`list_split`'s frame, and the entries left out, each named in a warning (shown by
    :func:`shown_path`): files beside the class folders of a labelled split, and images whose path
    is not valid UTF-8 text. Hidden files and folders (``._x.png``, ``.ipynb_checkpoints``) are
    passed over; labels and sources come from ``labels_csv`` or the split's sidecar CSV."""
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}: expected the Dataset layout <root>/{split}/")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    class_dirs = [d for d in entries if d.is_dir()]
    rows, left_out = [], []
    if class_dirs:
        loose = [shown_path(p) for p in entries if not p.is_dir()]
        if loose:
            warn(f"{len(loose)} file(s) directly in {shown_path(folder)} are not in a class folder and are left out; "
                 f"move each into {shown_path(folder)}/<class>/", loose)
        left_out += loose
        for d in class_dirs:
            if d.name not in CLASS_NAMES:
                raise InputError(f"{shown_path(d)}: unknown class folder; expected one of {', '.join(CLASS_NAMES)}")
            listed = list(d.iterdir())
            images, misnamed = _image_files(listed, f"in {shown_path(d)}")
            rows += [(f"{split}/{d.name}/{p.name}", str(p), d.name) for p in images]
            left_out += misnamed + _not_images(d, listed, images, misnamed)
    else:
        images, misnamed = _image_files(entries, f"in {shown_path(folder)}")
        rows += [(f"{split}/{p.name}", str(p), None) for p in images]
        left_out += misnamed + _not_images(folder, entries, images, misnamed)
    frame = pd.DataFrame(rows, columns=["image_id", "path", "label"]).set_index("image_id")
    frame["source"] = frame["label"]
    meta_path = Path(labels_csv) if labels_csv else root / (f"{split}_labels.csv" if not class_dirs else f"{split}_meta.csv")
    if meta_path.is_file():
        meta = read_label_csv(meta_path, unique=False)  # its ids are checked: x.png may stand in two class folders
        meta.index = [image_id_of(n, split, lab if class_dirs else None)
                      for n, lab in zip(meta["image_name"].astype(str), meta["label"])]
        check_unique(meta_path, list(meta.index))
        known = frame.index.intersection(meta.index)
        if not class_dirs:
            frame.loc[known, "label"] = meta.loc[known, "label"]
            frame["source"] = frame["label"]
        if "source" in meta.columns:
            frame.loc[known, "source"] = meta.loc[known, "source"]
    return frame, left_out


def rgb_image(img: "Image.Image") -> "Image.Image":
    """``img`` as 8-bit RGB: PIL's own conversion, except for 16- and 32-bit integer grayscale
    (PNG's 16-bit grayscale opens as ``I;16`` or ``I``), which PIL clips at 255 instead of scaling:
    those are scaled to 8 bits first (``I`` by its range: 16-bit when any value is above 255)."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = (values.clip(0, 65535) * 255 + 32767) // 65535
        img = Image.fromarray(values.clip(0, 255).astype(np.uint8))  # 2-D uint8: mode L
    return img.convert("RGB")


def pixel_hashes_under(folders: Iterable[Path | str]) -> set:
    """sha256 of the 8-bit RGB pixels (:func:`rgb_image`) of every image under ``folders``
    (:func:`images_under`); one that cannot be decoded is named in a warning (it cannot be scored
    either)."""
    import hashlib

    from PIL import Image

    hashes = set()
    for path in [p for folder in folders for p in images_under(folder)]:
        try:
            with Image.open(path) as img:
                hashes.add(hashlib.sha256(np.asarray(rgb_image(img)).tobytes()).hexdigest())
        except (OSError, ValueError):
            warn("an image cannot be decoded, so its pixels are not compared", [path])
    return hashes


def inspect_images(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and decode every image once: a frame indexed by path (as given) with ``sha256`` of the
    file's bytes (the feature store's key), ``readable``, the image's ``width`` and ``height`` and its
    PIL ``mode`` (``RGB``, ``L``, ``P``, ``RGBA``, …; ``None`` / 0 where the file cannot be read or decoded)."""
    import hashlib
    import io

    from PIL import Image

    rows = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                rgb_image(img).load()
                rows.append((str(path), hashlib.sha256(data).hexdigest(), True, *img.size, img.mode))
        except Exception:  # noqa: BLE001 - any reading or decoding failure makes the file unusable
            rows.append((str(path), None, False, 0, 0, None))
    return pd.DataFrame(rows, columns=["path", "sha256", "readable", "width", "height", "mode"]).set_index("path")


def load_images(paths: Iterable[str | Path], size: Optional[int] = None) -> torch.Tensor:
    """Images as ``B×3×H×W`` in ``[0, 1]``; ``size`` resizes (bicubic) when given."""
    from PIL import Image

    arrays = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = rgb_image(img)
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except OSError as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc
    if not arrays:
        return torch.zeros(0, 3, size or 0, size or 0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
