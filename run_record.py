"""What produced a report: the command, the code's commit, the weights, the versions.

``submission.py`` writes :func:`run_record` into its report's ``summary.json`` (``produced_by``),
so that a report read later, or by someone else, names the method's code and models, the
weights it scored with (folder and digest), the extractor and classifier versions, the git
commit of the checkout (and whether it had uncommitted edits) and the libraries' versions.
"""
from __future__ import annotations

import datetime
import importlib
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence

__all__ = ["LIBRARIES", "SUMMARY_GUIDE", "git_commit", "library_versions", "run_record", "json_safe", "write_summary"]

ROOT = Path(__file__).resolve().parent
LIBRARIES = ("torch", "numpy", "pandas", "sklearn", "lightgbm", "pyarrow", "PIL", "matplotlib")
# summary.json's "about": what its entries mean, in the file itself
SUMMARY_GUIDE = {
    "method": "the attribution method whose answers submission.csv holds (requested_method: as asked; auto keeps "
              "the one of higher validation accuracy, validation_accuracy_by_method)",
    "produced_by": "the command, git commit, weights (folder, sha256 digest), extractor and model-code versions, libraries",
    "validation, test": "n: images scored; accuracy, family_accuracy (VAR / RAR / outlier), outlier_recall: fractions of 1 "
                        "(null where undefined); accuracy_ci95: its 95 % Wilson interval. test only with test labels",
    "test_confidence": "bins of the probability each answer was given (test_probabilities.csv): images n, mean probability, "
                       "share right; log_loss: mean -ln p of the true class",
    "probability_temperature": "one temperature fitted on validation's log-loss; it changes no answer",
    "net_blend_weights": "per family, the variant net's weight in the blended variant posterior (chosen on train)",
    "variant_features_computed": "per family, of how many images (all splits) the scoring gate let the variant "
                                 "likelihoods be computed",
    "unreadable_*, skipped_*, images_in_two_splits, resized_images, converted_images": "inputs left out, "
                                                                                        "changed or suspicious, by path",
    "seconds": "wall time of the command",
}


def git_commit(folder: Path = ROOT) -> Dict[str, Optional[object]]:
    """``commit`` (the checkout's HEAD) and ``uncommitted_changes`` (a tracked file differs from it);
    both ``None`` outside a git checkout or without git."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "uncommitted_changes": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "uncommitted_changes": None if status is None else bool(status.strip())}


def library_versions(names: Sequence[str] = LIBRARIES) -> Dict[str, Optional[str]]:
    """``{library: version}`` of Python and each of ``names`` (``None`` for one that is not installed)."""
    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            versions[name] = None
    return versions


def run_record(arguments: Sequence[str], method: str, models: Path, weights_dir: Optional[Path], weights_digest: str,
               labels: Optional[Path], device: str) -> dict:
    """The ``produced_by`` entry of a report's ``summary.json``: the command (``submission.py`` and
    its ``arguments`` as given) and where it ran, when (UTC), the code (:func:`git_commit`), the
    weights (``weights_dir``, absolute, the shipped zoo when ``None``; ``demo_zoo``: that folder is the shipped zoo's;
    ``weights_digest``: sha256 of the files the models loaded), the feature extractor's version and that of the code that fitted ``method``'s
    models (:func:`attribution.model_version`), the ``models`` folder and the test ``labels`` scored
    against (absolute paths), the ``device`` and :func:`library_versions`."""
    from attribution import model_version
    from feature_extractor import EXTRACTOR_VERSION
    from models.zoo import DEMO_ZOO_DIR

    weights = Path(weights_dir if weights_dir is not None else DEMO_ZOO_DIR).resolve()
    return {"command": ["submission.py", *map(str, arguments)], "working_directory": str(Path.cwd()),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **git_commit(),
            "weights_dir": str(weights), "demo_zoo": weights == DEMO_ZOO_DIR.resolve(),
            "weights_digest": weights_digest, "extractor_version": EXTRACTOR_VERSION, "model_version": model_version(method),
            "models": str(Path(models).resolve()), "test_labels": str(Path(labels).resolve()) if labels is not None else None,
            "device": device, "versions": library_versions()}


def json_safe(value: object) -> object:
    """``value`` with every non-finite float as ``None`` (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_summary(path: Path, summary: dict) -> None:
    """``summary`` as indented UTF-8 JSON (``0–0.5`` as written, not ``0\\u20130.5``; NaN as ``null``),
    written atomically."""
    from atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
