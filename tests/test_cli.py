"""Commands end a user's mistake with one line and status 2, and keep tracebacks for bugs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli import USER_ERROR_STATUS, run_main
from models.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parent.parent


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
    from PIL import Image

    for split in ("train/var16", "val/var16", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(tmp_path / "data" / split / "x.png")
    (tmp_path / "weights").mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "submission.py"), "--test", str(tmp_path / "data" / "test"),
                           "--weights-dir", str(tmp_path / "weights"), "--out", str(tmp_path / "s.csv"),
                           "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == USER_ERROR_STATUS, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: weight file not found: {tmp_path / 'weights'}" in done.stderr
    assert not (tmp_path / "s.csv").exists()
