"""Commands end a user's mistake with one line and status 2, and keep tracebacks for bugs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli import USER_ERROR_STATUS, run_main
from models.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parent.parent


def _tiny_layout(root: Path, train_class: str = "var16") -> Path:
    from PIL import Image

    for split in (f"train/{train_class}", "val/var16", "test"):
        (root / split).mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(root / split / "x.png")
    return root / "test"


def test_checkpoint_errors_become_one_line(capsys):
    def main(argv):
        raise CheckpointError(f"weight file not found: {argv[0]} (check --weights-dir and the file name)")

    assert run_main(main, ["/w/vae.pth"]) == USER_ERROR_STATUS
    assert capsys.readouterr().err == "error: weight file not found: /w/vae.pth (check --weights-dir and the file name)\n"


def test_other_errors_keep_their_traceback():
    def main(argv):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_main(main, [])


def test_submission_with_an_empty_weights_dir_names_the_missing_file(tmp_path):
    test_dir = _tiny_layout(tmp_path / "data")
    (tmp_path / "weights").mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "submission.py"), "--test", str(test_dir),
                           "--weights-dir", str(tmp_path / "weights"), "--out", str(tmp_path / "s.csv"),
                           "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == USER_ERROR_STATUS, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: weight file not found: {tmp_path / 'weights'}" in done.stderr
    assert not (tmp_path / "s.csv").exists()


def test_a_missing_input_file_becomes_one_line(capsys):
    def main(argv):
        raise FileNotFoundError(f"{argv[0]}: no such feature file")

    assert run_main(main, ["/x/features.parquet"]) == USER_ERROR_STATUS
    assert capsys.readouterr().err == "error: /x/features.parquet: no such feature file\n"


def test_a_weights_dir_that_is_not_a_folder_is_named(tmp_path, capsys):
    import submission

    test_dir = _tiny_layout(tmp_path / "data")
    args = ["--test", str(test_dir), "--weights-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "s.csv"),
            "--cache-dir", str(tmp_path / "cache")]
    assert run_main(submission.main, args) == USER_ERROR_STATUS
    assert f"error: --weights-dir {tmp_path / 'absent'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_an_unknown_class_folder_is_named_without_a_traceback(tmp_path):
    import submission

    test_dir = _tiny_layout(tmp_path / "data", train_class="cats")
    with pytest.raises(SystemExit, match=r"--train: .*train/cats: unknown class folder; expected one of var16"):
        submission.main(["--test", str(test_dir), "--out", str(tmp_path / "s.csv")])


def test_a_test_folder_that_does_not_exist_is_named_as_missing(tmp_path):
    import submission

    test_dir = _tiny_layout(tmp_path / "data")
    with pytest.raises(SystemExit, match=r"tset: no such folder; give --test DIR"):
        submission.main(["--test", str(test_dir.with_name("tset")), "--out", str(tmp_path / "s.csv")])
    with pytest.raises(SystemExit, match=r"x\.png: no such folder; give --test DIR.*\(this is a file\)"):
        submission.main(["--test", str(test_dir / "x.png"), "--out", str(tmp_path / "s.csv")])
    assert not (tmp_path / "s.csv").exists()


def test_folder_images_leaves_out_and_names_undecodable_files(tmp_path, capsys):
    from cli import folder_images

    test_dir = _tiny_layout(tmp_path)
    (test_dir / "broken.png").write_bytes(b"\x89PNG not really")
    assert folder_images(test_dir) == [test_dir / "x.png"]
    assert f"cannot be decoded and are left out: {test_dir / 'broken.png'}" in capsys.readouterr().err
    (test_dir / "x.png").unlink()
    with pytest.raises(SystemExit) as stopped:
        folder_images(test_dir)
    assert stopped.value.code == USER_ERROR_STATUS


def test_count_options_are_checked_when_parsed():
    import argparse

    from cli import at_least

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=at_least(1))
    assert parser.parse_args(["--batch-size", "8"]).batch_size == 8
    for bad in ("0", "-3", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--batch-size", bad])


def test_submission_refuses_a_folder_as_out_before_any_work(tmp_path, capsys):
    import submission

    with pytest.raises(SystemExit):
        submission.main(["--test", str(tmp_path), "--out", str(tmp_path)])
    assert "is a folder; give a file name" in capsys.readouterr().err
