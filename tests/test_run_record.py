"""A report's ``summary.json`` names what produced it: the command, the commit, the weights and
the versions (``run_record.run_record``, written by ``submission.py`` as ``produced_by``), and it
says what its entries mean (``about``)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import run_record
import submission

ROOT = Path(__file__).resolve().parent.parent


def test_record_names_command_commit_weights_and_versions(tmp_path):
    record = run_record.run_record(["--demo", "--out", "x.csv"], "flat", tmp_path / "models", None, "ab" * 32,
                                   tmp_path / "labels.csv", "cpu")
    json.dumps(record, allow_nan=False)  # it goes into summary.json as it is
    assert record["command"] == ["submission.py", "--demo", "--out", "x.csv"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout, as the tests run here and in CI
        assert record["commit"] == head.stdout.strip() and isinstance(record["uncommitted_changes"], bool)
    from models.zoo import DEMO_ZOO_DIR

    assert record["weights_dir"] == str(DEMO_ZOO_DIR.resolve()) and record["demo_zoo"] is True
    assert record["weights_digest"] == "ab" * 32
    named = run_record.run_record([], "flat", tmp_path, DEMO_ZOO_DIR.parent / "demo_zoo" / ".", "ab" * 32, None, "cpu")
    assert named["demo_zoo"] is True, "--weights-dir naming the shipped zoo is the demo zoo too"
    assert run_record.run_record([], "flat", tmp_path, tmp_path, "ab" * 32, None, "cpu")["demo_zoo"] is False
    from attribution import model_version
    from feature_extractor import EXTRACTOR_VERSION

    assert record["extractor_version"] == EXTRACTOR_VERSION and record["model_version"] == model_version("flat")
    assert record["models"] == str((tmp_path / "models").resolve()) and record["test_labels"] == str(tmp_path / "labels.csv")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["created_utc"])
    assert {"python", "torch", "lightgbm", "sklearn", "numpy", "pandas"} <= set(record["versions"])
    assert all(v for name, v in record["versions"].items() if name in ("torch", "lightgbm"))


def test_no_commit_outside_a_checkout(tmp_path):
    assert run_record.git_commit(tmp_path) == {"commit": None, "uncommitted_changes": None}


def test_submission_records_its_arguments_as_given(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(submission, "run", lambda args: seen.setdefault("args", args) and 0)
    monkeypatch.setattr("run_inputs.check_before_work", lambda *a, **k: None)
    monkeypatch.setattr("run_inputs.check_outputs", lambda *a, **k: None)
    argv = ["--test", str(tmp_path), "--out", str(tmp_path / "s.csv"), "--method", "flat"]
    submission.main(argv)
    assert seen["args"].arguments == argv


def test_summary_writes_the_record_and_the_guide():
    source = (ROOT / "submission.py").read_text()
    assert '"produced_by": run_record(' in source and '"about": SUMMARY_GUIDE' in source


def test_help_names_every_file_the_report_folder_gets():
    """``--help`` lists what a run writes into the report folder (it said only 'default: <out>_report/')."""
    from scoring import CONFIDENCE_FILE, CONFIDENCE_PNG, PROBABILITIES_FILE, report_files

    per_class, confusion_csv, confusion_png, markdown = report_files("val")
    assert (confusion_png, CONFIDENCE_PNG) == (confusion_csv[:-4] + ".png", CONFIDENCE_FILE[:-4] + ".png")  # named as pairs below
    text = " ".join(submission.build_parser().format_help().split())
    for name in ("summary.json", markdown, per_class, confusion_csv[:-4] + ".csv/.png",
                 PROBABILITIES_FILE, CONFIDENCE_FILE[:-4] + ".csv/.png", "features_{train,val,test}.parquet",
                 "labels_{train,val}.csv"):
        assert name in text, name


def test_summary_json_reads_as_written(tmp_path):
    """The confidence bins' names are written as they read (``0–0.5``; they were ``0\\u20130.5``) and NaN as null."""
    run_record.write_summary(tmp_path / "summary.json", {"bins": [{"confidence": "0–0.5", "accuracy": float("nan")}]})
    text = (tmp_path / "summary.json").read_text(encoding="utf-8")
    assert '"confidence": "0–0.5"' in text and '"accuracy": null' in text and text.endswith("}\n")
    assert json.loads(text) == {"bins": [{"confidence": "0–0.5", "accuracy": None}]}
