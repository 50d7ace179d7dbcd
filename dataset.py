"""Reading the Dataset layout: ``train/<class>/``, ``val/<class>/``, ``test/*.png`` (+ hidden labels).

Every split is listed as a pandas frame indexed by ``image_id`` (the path relative to the
Dataset root, e.g. ``train/var16/img_00012.png``, so ids are unique across splits) with columns
``path``, ``label`` (one of :data:`models.registry.CLASS_NAMES`, or ``None`` for unlabeled test
images) and ``source`` (what made the image — the variant, ``natural`` or ``outlier_iar`` — where
a sidecar ``<split>_meta.csv`` or the hidden ``test_labels.csv`` says so, else the label).
Images load as float tensors in ``[0, 1]``, ``B×3×H×W``.

A file or folder that cannot be used — a labels CSV that does not parse or lacks its columns,
features and labels that disagree, a class folder of an unknown name — raises
:class:`cli.InputError` (a ``ValueError``) naming it: one ``error:`` line under
:func:`cli.run_main`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import torch

from cli import InputError
from models.registry import CLASS_NAMES

__all__ = ["IMAGE_SUFFIXES", "REPORT_DIR", "list_split", "load_images", "inspect_images", "read_label_csv", "read_feature_frame", "read_labelled_features", "add_labelled_split_arguments", "images_under"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# where ``submission.py`` leaves each split's feature frame and labels (``--report-dir``)
REPORT_DIR = Path("submission_report")


def read_label_csv(path: Path | str) -> pd.DataFrame:
    """A CSV with ``image_name,label`` (+ optional columns), validated (:class:`cli.InputError` if not)."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a CSV file of image_name,label ({type(err).__name__}: {err})") from None
    missing = {"image_name", "label"} - set(frame.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)}; expected image_name,label")
    unknown = sorted(set(frame["label"]) - set(CLASS_NAMES), key=str)
    if unknown:
        raise InputError(f"{path}: unknown label(s) {unknown}; expected one of {', '.join(CLASS_NAMES)}")
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
    """Every image file below ``folder`` (recursively), sorted: what the folder commands read."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _images_in(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def list_split(root: Path | str, split: str, labels_csv: Optional[Path | str] = None) -> pd.DataFrame:
    """All images of ``split`` under ``root`` with their labels and sources (hidden folders such
    as ``.ipynb_checkpoints`` are not class folders and are passed over)."""
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}: expected the Dataset layout <root>/{split}/")
    rows = []
    class_dirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]  # not .ipynb_checkpoints
    if class_dirs:
        for d in class_dirs:
            if d.name not in CLASS_NAMES:
                raise InputError(f"{d}: unknown class folder; expected one of {', '.join(CLASS_NAMES)}")
            rows += [(f"{split}/{d.name}/{p.name}", str(p), d.name) for p in _images_in(d)]
    else:
        rows += [(f"{split}/{p.name}", str(p), None) for p in _images_in(folder)]
    frame = pd.DataFrame(rows, columns=["image_id", "path", "label"]).set_index("image_id")
    frame["source"] = frame["label"]
    meta_path = Path(labels_csv) if labels_csv else root / (f"{split}_labels.csv" if not class_dirs else f"{split}_meta.csv")
    if meta_path.is_file():
        meta = read_label_csv(meta_path) if not class_dirs else pd.read_csv(meta_path)
        names = meta["image_name"].astype(str)
        meta.index = [n if n.startswith(f"{split}/") else (f"{split}/{n}" if not class_dirs else f"{split}/{lab}/{n}")
                      for n, lab in zip(names, meta["label"])]
        meta = meta[~meta.index.duplicated()]
        known = frame.index.intersection(meta.index)
        if not class_dirs:
            frame.loc[known, "label"] = meta.loc[known, "label"]
            frame["source"] = frame["label"]
        if "source" in meta.columns:
            frame.loc[known, "source"] = meta.loc[known, "source"]
    return frame


def inspect_images(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and decode every image once: a frame indexed by path (as given) with ``sha256`` of the
    file's bytes (the feature store's key), ``readable`` and the image's ``width`` and ``height``
    (``None`` / 0 where the file cannot be read or decoded)."""
    import hashlib
    import io

    from PIL import Image

    rows = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                img.convert("RGB").load()
                rows.append((str(path), hashlib.sha256(data).hexdigest(), True, *img.size))
        except Exception:  # noqa: BLE001 - any reading or decoding failure makes the file unusable
            rows.append((str(path), None, False, 0, 0))
    return pd.DataFrame(rows, columns=["path", "sha256", "readable", "width", "height"]).set_index("path")


def load_images(paths: Iterable[str | Path], size: Optional[int] = None) -> torch.Tensor:
    """Images as ``B×3×H×W`` in ``[0, 1]``; ``size`` resizes (bicubic) when given."""
    from PIL import Image

    arrays = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except OSError as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc
    if not arrays:
        return torch.zeros(0, 3, size or 0, size or 0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
