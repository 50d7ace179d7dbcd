"""Commands end a user's mistake with one line and status 2, and keep tracebacks for bugs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli import USER_ERROR_STATUS, InputError, run_main
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
    with pytest.raises(InputError, match=r"--train: .*train/cats: unknown class folder; expected one of var16"):
        submission.main(["--test", str(test_dir), "--out", str(tmp_path / "s.csv")])


def test_a_test_folder_that_does_not_exist_is_named_as_missing(tmp_path):
    import submission

    test_dir = _tiny_layout(tmp_path / "data")
    with pytest.raises(InputError, match=r"tset: no such folder; give --test DIR"):
        submission.main(["--test", str(test_dir.with_name("tset")), "--out", str(tmp_path / "s.csv")])
    with pytest.raises(InputError, match=r"x\.png: no such folder; give --test DIR.*\(this is a file\)"):
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


# --- bad input files, user errors of submission.py, devices, weight files, default roots -----

def test_bad_input_files_become_one_line(tmp_path, capsys):
    """``dataset``'s checks raise :class:`cli.InputError`, which :func:`run_main` prints as one line."""
    import feature_plotter
    import pandas as pd

    def main(argv):
        raise InputError(f"{argv[0]}: missing column(s) ['label']")

    assert run_main(main, ["/x/labels.csv"]) == USER_ERROR_STATUS
    assert capsys.readouterr().err == "error: /x/labels.csv: missing column(s) ['label']\n"
    features = tmp_path / "features.parquet"
    pd.DataFrame({"VAR_quant_loss": [1.0, 2.0]}, index=pd.Index(["a.png", "b.png"], name="image_id")).to_parquet(features)
    (tmp_path / "labels.csv").write_text("image_name,label\na.png,var16\nc.png,rarb\n")  # b.png unlabelled, c.png extra
    assert run_main(feature_plotter.main, ["--features", str(features), "--labels", str(tmp_path / "labels.csv"),
                                           "--out", str(tmp_path / "report")]) == USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "disagree: 1 image(s) without a label, 1 label(s) without features" in err
    (tmp_path / "labels.csv").write_text("image_name,label\na.png,var16\nb.png,cat\n")
    assert run_main(feature_plotter.main, ["--features", str(features), "--labels", str(tmp_path / "labels.csv")]) == USER_ERROR_STATUS
    assert "unknown label(s) ['cat']" in capsys.readouterr().err


def test_a_missing_per_token_frame_names_the_run_that_writes_it(tmp_path):
    from dataset import read_feature_frame

    with pytest.raises(FileNotFoundError, match=r"tokens_train\.parquet: no such per-token file; `python submission.py --demo --method prada`"):
        read_feature_frame(tmp_path / "tokens_train.parquet")
    with pytest.raises(FileNotFoundError, match=r"features_val\.parquet: no such feature file; `python submission.py --demo` writes"):
        read_feature_frame(tmp_path / "features_val.parquet")


def test_submission_user_errors_are_one_error_line_with_status_2(tmp_path, capsys):
    import submission

    assert run_main(submission.main, ["--out", str(tmp_path / "s.csv")]) == USER_ERROR_STATUS
    assert capsys.readouterr().err.startswith("error: give --test FOLDER")
    assert run_main(submission.main, ["--test", str(tmp_path / "absent"), "--out", str(tmp_path / "s.csv")]) == USER_ERROR_STATUS
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'absent'}: no such folder; give --test DIR")


def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import submission
    import torch

    test_dir = _tiny_layout(tmp_path / "data")
    args = ["--test", str(test_dir), "--out", str(tmp_path / "s.csv"), "--cache-dir", str(tmp_path / "cache")]
    assert run_main(submission.main, args + ["--device", "gpu"]) == USER_ERROR_STATUS
    assert capsys.readouterr().err == "error: --device gpu: not a torch device; use cpu, cuda or cuda:N\n"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_main(submission.main, args + ["--device", "cuda"]) == USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda: this torch ") and "cannot use CUDA" in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "s.csv").exists()


def _partial_official_weights(folder: Path) -> Path:
    """A folder holding VAR's official files (empty) but none of RAR's."""
    folder.mkdir()
    for name in ("vae_ch160v4096z32.pth", "var_d16.pth", "var_d20.pth", "var_d24.pth", "var_d30.pth"):
        (folder / name).write_bytes(b"")
    return folder


def test_every_weight_file_of_both_families_is_checked_up_front(tmp_path, capsys, small_zoo_dir):
    import shutil

    import feature_extractor
    import submission
    from cli import check_weight_files, required_weight_files

    weights = _partial_official_weights(tmp_path / "weights")
    test_dir = _tiny_layout(tmp_path / "data")
    args = ["--test", str(test_dir), "--weights-dir", str(weights), "--out", str(tmp_path / "s.csv"),
            "--cache-dir", str(tmp_path / "cache")]
    assert run_main(submission.main, args) == USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert err.startswith(f"error: weight file not found: {weights / 'maskgit-vqgan-imagenet-f16-256.bin'} and 4 more")
    assert "rar_b.bin, rar_l.bin, rar_xl.bin, rar_xxl.bin" in err and "all 10 files" in err
    assert not (tmp_path / "cache").exists(), "nothing was fine-tuned or cached before the check"
    assert run_main(feature_extractor.main, [str(test_dir), "--out", str(tmp_path / "f.parquet"),
                                             "--weights-dir", str(weights)]) == USER_ERROR_STATUS
    assert "error: weight file not found:" in capsys.readouterr().err
    # a zoo folder: the files its zoo.json names
    assert {p.name for p in required_weight_files(small_zoo_dir)} == {"var_tok.safetensors", "var_gen.safetensors",
                                                                      "rar_tok.safetensors", "rar_gen.safetensors"}
    zoo = Path(shutil.copytree(small_zoo_dir, tmp_path / "zoo"))
    (zoo / "rar_gen.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weight file not found: .*rar_gen.safetensors"):
        check_weight_files(zoo)
    check_weight_files(None)  # the demo zoo is complete


def test_the_feature_store_is_named_by_the_files_the_models_load(tmp_path, small_zoo_dir):
    """``weight_files`` (whose digest names the feature store) globbed a zoo's top-level
    ``*.safetensors``: a generator named in ``zoo.json`` as a ``.pth`` or in a subfolder was left out
    (a changed file reused stale features), and a stray file beside them was hashed."""
    import json
    import shutil

    from feature_extractor import weight_files

    zoo = Path(shutil.copytree(small_zoo_dir, tmp_path / "zoo"))
    (zoo / "gens").mkdir()
    shutil.move(zoo / "rar_gen.safetensors", zoo / "gens" / "rar_gen.safetensors")
    manifest = json.loads((zoo / "zoo.json").read_text())
    manifest["families"]["RAR"]["variants"]["rarb"]["file"] = "gens/rar_gen.safetensors"
    (zoo / "zoo.json").write_text(json.dumps(manifest))
    shutil.copy(zoo / "var_gen.safetensors", zoo / "stray.safetensors")
    assert sorted(str(p.relative_to(zoo)) for p in weight_files(zoo)) == [
        "gens/rar_gen.safetensors", "rar_tok.safetensors", "var_gen.safetensors", "var_tok.safetensors", "zoo.json"]


def test_a_damaged_or_wrong_weight_file_is_named_before_any_work(tmp_path, small_zoo_dir):
    """The up-front check only asked whether each file exists: a file of another model (var_d20.pth
    holding d16's weights) failed when its generator was first used, hours into a run, and an empty
    file gave ``cannot read …: `` with no reason."""
    import json
    import shutil

    from cli import check_weight_files

    zoo = Path(shutil.copytree(small_zoo_dir, tmp_path / "zoo"))
    shutil.copy(zoo / "var_gen.safetensors", zoo / "rar_gen.safetensors")
    with pytest.raises(CheckpointError, match="rar_gen.safetensors does not fit RARGenerator"):
        check_weight_files(zoo)
    shutil.copy(small_zoo_dir / "rar_gen.safetensors", zoo / "rar_gen.safetensors")
    check_weight_files(zoo)
    (zoo / "var_tok.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cannot read .*var_tok.safetensors \(it is empty\)"):
        check_weight_files(zoo)
    (zoo / "var_tok.pth").write_bytes(b"not a checkpoint")
    manifest = json.loads((zoo / "zoo.json").read_text())
    manifest["families"]["VAR"]["tokenizer"]["file"] = "var_tok.pth"
    (zoo / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"cannot read .*var_tok.pth \(UnpicklingError: .*download it again$"):
        check_weight_files(zoo)


def test_every_command_defaults_to_submissions_cache_layout(tmp_path, monkeypatch):
    """``feature_extractor.py`` and ``quantizer.py`` read the inverse decoders and variant nets
    where ``submission.py`` fine-tunes them: ``<--cache-dir cache>/inv_decoder`` and ``/variant_net``."""
    import argparse

    import feature_extractor
    import submission
    from cli import add_weights_arguments

    cache = submission.build_parser().parse_args([]).cache_dir
    parser = argparse.ArgumentParser()
    add_weights_arguments(parser, nets=True)
    defaults = parser.parse_args([])
    assert (defaults.inv_root, defaults.net_root) == (cache / "inv_decoder", cache / "variant_net")
    seen = {}

    class Stop(Exception):
        pass

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise Stop  # before any model loads

    monkeypatch.setattr(feature_extractor, "FeatureExtractor", Recorder)
    test_dir = _tiny_layout(tmp_path)
    with pytest.raises(Stop):
        feature_extractor.main([str(test_dir), "--out", str(tmp_path / "f.parquet")])
    assert (seen["inv_root"], seen["net_root"], seen["device"]) == (cache / "inv_decoder", cache / "variant_net", "cpu")
    with pytest.raises(Stop):
        feature_extractor.main([str(test_dir), "--out", str(tmp_path / "f.parquet"), "--net-root", str(tmp_path / "nets")])
    assert seen["net_root"] == tmp_path / "nets"


def test_feature_extractor_names_a_folder_that_does_not_exist(tmp_path, capsys):
    import feature_extractor

    assert run_main(feature_extractor.main, [str(tmp_path / "absent"), "--out", str(tmp_path / "f.parquet")]) == USER_ERROR_STATUS
    assert capsys.readouterr().err == f"error: {tmp_path / 'absent'}: no such folder; give a folder of images\n"


# --- what the listings read: one rule for a visible image file, one for a labels CSV's names ---

def _non_utf8_image(folder: Path) -> Path:
    """A PNG named ``café.png`` in Latin-1 (not valid UTF-8, legal on POSIX); skips where the file system refuses it."""
    import os

    from PIL import Image

    raw = os.fsencode(folder) + b"/caf\xe9.png"
    try:
        Image.new("RGB", (64, 64)).save(raw, format="PNG")
    except (OSError, ValueError):
        pytest.skip("this file system accepts only UTF-8 file names")
    return Path(os.fsdecode(raw))


def test_a_file_name_that_is_not_utf8_costs_no_row_and_is_named(tmp_path, capsys):
    """Such a name cannot go into a frame or a CSV: the test image gets no row, the training image
    is left out, each named (its odd byte as ``\\xe9``) in a warning and in the summary's notes."""
    import json

    from run_inputs import gather_inputs

    test_dir = _tiny_layout(tmp_path / "data")
    _non_utf8_image(test_dir)
    _non_utf8_image(tmp_path / "data" / "train" / "var16")
    inputs = gather_inputs(test_dir, tmp_path / "data" / "train", tmp_path / "data" / "val")
    assert inputs.test_paths == [test_dir / "x.png"] and list(inputs.train.index) == ["train/var16/x.png"]
    shown_test, shown_train = f"{test_dir}/caf\\xe9.png", f"{tmp_path / 'data' / 'train' / 'var16'}/caf\\xe9.png"
    assert inputs.notes["skipped_test_entries"] == [shown_test]
    assert inputs.notes["skipped_labelled_entries"] == [shown_train]
    json.dumps(inputs.notes).encode("utf-8")  # the summary can hold them
    err = capsys.readouterr().err
    assert shown_test in err and shown_train in err and "not valid UTF-8" in err


def test_a_malformed_meta_csv_of_a_class_folder_split_is_named(tmp_path):
    from dataset import list_split

    _tiny_layout(tmp_path)
    meta = tmp_path / "train_meta.csv"
    meta.write_text("image_name,source\nx.png,var16\n")
    with pytest.raises(InputError, match=r"train_meta\.csv: missing column\(s\) \['label'\]; expected image_name,label"):
        list_split(tmp_path, "train")
    meta.write_text("image_name,label\nx.png,var16\nx.png,var16,extra\n")
    with pytest.raises(InputError, match=r"train_meta\.csv: not a CSV file of image_name,label \(ParserError"):
        list_split(tmp_path, "train")


def test_duplicated_image_names_in_a_labels_file_are_refused(tmp_path):
    """Two rows for one image (even agreeing ones) are refused by every reader, naming the file and
    the image; the same file name in two class folders of a ``<split>_meta.csv`` is two images."""
    import pandas as pd
    from PIL import Image

    from dataset import list_split, read_label_csv, read_labelled_features
    from run_inputs import read_test_labels

    test_dir = _tiny_layout(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("image_name,label\nx.png,var16\ny.png,rarb\nx.png,rarb\n")
    with pytest.raises(InputError, match=r"labels\.csv: 1 image name\(s\) on more than one row \(x\.png\); keep one row per image"):
        read_label_csv(labels)
    pd.DataFrame({"VAR_q": [1.0, 2.0]}, index=pd.Index(["x.png", "y.png"], name="image_id")).to_parquet(tmp_path / "f.parquet")
    with pytest.raises(InputError, match=r"labels\.csv: 1 image name\(s\) on more than one row"):
        read_labelled_features(tmp_path / "f.parquet", labels)
    with pytest.raises(InputError, match=r"--labels: .*labels\.csv: 1 image name\(s\) on more than one row \(x\.png\)"):
        read_test_labels(labels, [test_dir / "x.png"])
    (tmp_path / "train" / "rarb").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "train" / "rarb" / "x.png")
    (tmp_path / "train_meta.csv").write_text("image_name,label,source\nx.png,var16,var16\nx.png,rarb,rarb\n")
    assert list_split(tmp_path, "train")["source"].to_dict() == {"train/rarb/x.png": "rarb", "train/var16/x.png": "var16"}
    (tmp_path / "train_meta.csv").write_text("image_name,label,source\nx.png,var16,var16\ntrain/var16/x.png,var16,natural\n")
    with pytest.raises(InputError, match=r"train_meta\.csv: 1 image name\(s\) on more than one row \(train/var16/x\.png\)"):
        list_split(tmp_path, "train")


def test_every_listing_ignores_hidden_files_and_folders(tmp_path, capsys):
    """macOS's ``._x.png`` and Jupyter's ``.ipynb_checkpoints/`` are no images to any listing; an
    image beside the class folders of train/ is left out and named."""
    from PIL import Image

    from cli import folder_images
    from run_inputs import gather_inputs, test_folder_images

    test_dir = _tiny_layout(tmp_path)
    for folder in (tmp_path / "train" / "var16", tmp_path / "train", test_dir):
        (folder / "._x.png").write_bytes(b"\x00\x05\x16\x07")  # what macOS leaves beside a copy
        (folder / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (64, 64)).save(folder / ".ipynb_checkpoints" / "x-checkpoint.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "train" / "loose.png")
    inputs = gather_inputs(test_dir, tmp_path / "train", tmp_path / "val")
    assert list(inputs.train.index) == ["train/var16/x.png"] and inputs.notes["unreadable_labelled_images"] == []
    assert inputs.notes["skipped_labelled_entries"] == [str(tmp_path / "train" / "loose.png")]
    err = capsys.readouterr().err
    assert "not in a class folder and are left out" in err and str(tmp_path / "train" / "loose.png") in err
    assert "cannot be decoded" not in err
    assert folder_images(tmp_path / "train") == [tmp_path / "train" / "loose.png", tmp_path / "train" / "var16" / "x.png"]
    assert test_folder_images(test_dir) == ([test_dir / "x.png"], [test_dir / "._x.png", test_dir / ".ipynb_checkpoints"])


def test_test_labels_may_name_images_bare_or_by_their_path_in_the_dataset(tmp_path):
    """``x.png`` and ``test/x.png`` name the same test image, for the run's ``--labels`` and for
    :func:`dataset.list_split` alike; naming it both ways is two rows for one image."""
    from dataset import list_split
    from run_inputs import read_test_labels

    test_dir = _tiny_layout(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("image_name,label\ntest/x.png,var16\n")
    assert read_test_labels(labels, [test_dir / "x.png"]).to_dict() == {"x.png": "var16"}
    assert list_split(tmp_path, "test", labels)["label"].to_dict() == {"test/x.png": "var16"}
    labels.write_text("image_name,label\ntest/x.png,var16\nx.png,var16\n")
    for read in (lambda: read_test_labels(labels, [test_dir / "x.png"]), lambda: list_split(tmp_path, "test", labels)):
        with pytest.raises(InputError, match=r"labels\.csv: 1 image name\(s\) on more than one row \(test/x\.png\)"):
            read()


def test_a_class_folders_subfolders_and_other_files_are_named_not_dropped_silently(tmp_path, capsys):
    """Images in a subfolder of ``train/var16/`` were left out without a word (a loose file beside
    the class folders was named); the listing does not search subfolders, and now says so."""
    import numpy as np
    from PIL import Image

    from dataset import read_split

    (tmp_path / "train" / "var16" / "batch2").mkdir(parents=True)
    for path in (tmp_path / "train" / "var16" / "a.png", tmp_path / "train" / "var16" / "batch2" / "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    (tmp_path / "train" / "var16" / "notes.txt").write_text("")
    (tmp_path / "train" / "var16" / ".DS_Store").write_text("")
    frame, left_out = read_split(tmp_path, "train")
    assert list(frame.index) == ["train/var16/a.png"]
    assert sorted(Path(p).name for p in left_out) == ["batch2", "notes.txt"]
    err = capsys.readouterr().err
    assert "2 entries in " in err and "are not image files (subfolders are not searched) and are left out" in err, err


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's ``convert("RGB")`` clips a 16-bit grayscale PNG (mode ``I;16``) at 255: a gradient
    became nearly all white, though the run says such an image is converted."""
    import numpy as np
    from PIL import Image

    import torch

    from dataset import inspect_images, load_images

    levels = np.arange(256, dtype=np.uint16).repeat(16).reshape(64, 64)
    Image.fromarray(levels * 257).save(tmp_path / "g16.png")  # 8-bit levels written as 16-bit
    Image.fromarray(levels.astype(np.uint8)).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    sixteen, eight = load_images([tmp_path / "g16.png", tmp_path / "g8.png"])
    assert torch.equal(sixteen, eight)
    assert inspect_images([tmp_path / "g16.png"])["readable"].all()


# --- the scripts' count and name options ------------------------------------------------------

def _script(name: str):
    import importlib

    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module(name)


@pytest.mark.parametrize("script, argv, message", [
    ("bench_token_search", ["--per-group", "0"], "--per-group: must be at least 1, got 0"),
    ("bench_token_search", ["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    ("zoo_gallery", ["--per-class", "0"], "--per-class: must be at least 1, got 0"),
    ("zoo_gallery", ["--psnr-crops", "0"], "--psnr-crops: must be at least 1, got 0"),
    ("eval_robustness", ["--signals", "quant_loss", "enc_los"], "argument --signals: invalid choice: 'enc_los'"),
    ("eval_robustness", ["--attacks", "none", "jpg"], "argument --attacks: invalid choice: 'jpg'"),
])
def test_script_options_are_checked_when_parsed(tmp_path, capsys, script, argv, message):
    """A count of 0 or a misspelled name is refused before any image or model loads (they once ended
    in a traceback after the work, or a misspelled signal was silently left out)."""
    inputs = {"zoo_gallery": ["--zoo", str(tmp_path / "absent"), "--out", str(tmp_path / "out")],
              "eval_robustness": ["--dataset", str(tmp_path / "absent"), "--out", str(tmp_path / "out")],
              "bench_token_search": ["--dataset", str(tmp_path / "absent")]}[script]
    with pytest.raises(SystemExit) as stopped:
        _script(script).main(argv + inputs)
    assert stopped.value.code == USER_ERROR_STATUS
    assert message in capsys.readouterr().err


def test_zoo_gallery_names_a_folder_that_is_no_zoo_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "zoo_gallery.py"), "--zoo", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == USER_ERROR_STATUS, done.stderr
    assert done.stderr == f"error: no zoo manifest at {tmp_path / 'zoo.json'} (is this a zoo folder?)\n"


# --- output paths and options checked before any work ---------------------------------------

@pytest.mark.parametrize("command, args", [
    ("quantizer", ["FOLDER", "--out", "{d}"]),                          # a folder given for a file
    ("quantizer", ["FOLDER", "--out", "{f}/q.csv"]),                    # a file given for a folder on the way
    ("feature_extractor", ["FOLDER", "--out", "{d}/x.txt"]),            # neither .parquet nor .csv
    ("provenance", ["--out", "{f}"]),                                    # a file given for a folder
    ("submission", ["--demo", "--report-dir", "{f}"]),
    ("submission", ["--demo", "--no-cache", "--rebuild"]),              # --rebuild writes what --no-cache leaves alone
    ("feature_extractor", ["FOLDER", "--out", "{d}/x.csv", "--no-cache", "--rebuild"]),
    ("augmentation", ["IMAGE", "--attack", "blur", "--out", "{d}/a.txt"]),
    ("augmentation", ["IMAGE", "--attack", "blur", "--strength", "4", "--out", "{d}/a.png"]),  # an even kernel
    ("augmentation", ["IMAGE", "--attack", "resize", "--strength", "5", "--out", "{d}/a.png"]),  # an up-scale, not a resize
    ("augmentation", ["IMAGE", "--attack", "none", "--strength", "1", "--out", "{d}/a.png"]),
    ("inv_decoder", ["--family", "VAR", "--lr", "0", "--out", "{d}/inv"]),  # with --out: a regression must not fine-tune into cache/
    ("inv_decoder", ["--family", "VAR", "--seed", "11", "--out", "{d}/inv"]),  # was a ValueError after the models loaded
    ("inv_decoder", ["--family", "VAR", "--images", "200000", "--out", "{d}/inv"]),
    ("variant_net", ["--family", "VAR", "--existing", "--epochs", "3", "--out", "{d}/nets"]),  # was ignored: --existing trains nothing
    ("augmentation", ["IMAGE", "--attack", "blur", "--strength", "inf", "--out", "{d}/a.png"]),  # was an OverflowError
    ("augmentation", ["IMAGE", "--attack", "blur", "--strength", "17", "--out", "{d}/a.png"]),  # wider than the 8×8 image
    ("flat_prada", ["--epochs", "0"]),
    ("flat_prada", ["--var-patch-nums", "1,x"]),
    ("variant_net", ["--family", "VAR", "--existing", "--eval", "{d}/typo", "--out", "{d}/nets"]),  # a missing input folder
    ("variant_net", ["--family", "VAR", "--existing", "--eval", "{f}", "--out", "{d}/nets"]),       # a file for a folder
    ("feature_plotter", ["--features", "{f}", "--labels", "{f}", "--models", "{d}/typo", "--out", "{d}/rep"]),
    ("feature_plotter", ["--features", "{f}", "--labels", "{f}", "--models", "{d}", "--out", "{d}/rep"]),  # no *.joblib
])
def test_bad_outputs_and_options_are_refused_by_the_parser(tmp_path, capsys, command, args):
    """argparse's own status 2 and one line naming the option, before anything is read or computed
    (FOLDER and IMAGE do not exist: a command that got past its options would fail on them)."""
    import importlib

    (tmp_path / "afile").write_text("")
    args = [a.format(d=tmp_path, f=tmp_path / "afile").replace("FOLDER", str(tmp_path / "no_folder"))
            .replace("IMAGE", str(tmp_path / "no_image.png")) for a in args]
    if command == "augmentation" and "--strength" in args:  # the strength is checked on a real image
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "no_image.png")
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(command).main(args)
    assert exit_.value.code == USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " in err.strip().splitlines()[-1], err
    assert not (tmp_path / "a.png").exists()


def test_submission_outputs_that_would_fail_or_overwrite_inputs_are_refused_before_work(tmp_path, capsys):
    """The default report folder (``<out>_report``) was only made after the work, and a file there
    ended the run with a traceback; ``--cache-dir`` was not checked at all; ``--out`` could replace
    the ``--labels`` it is scored against, and a report folder in the test folder put its PNG images
    among the next run's test images."""
    import submission

    (tmp_path / "s_report").write_text("")
    (tmp_path / "afile").write_text("")
    (tmp_path / "labels.csv").write_text("image_name,label\n")
    test = tmp_path / "Dataset" / "test"
    for argv, message in [
        (["--test", str(test), "--out", str(tmp_path / "s.csv")], "the report folder (default <out>_report"),
        (["--test", str(test), "--cache-dir", str(tmp_path / "afile")], "argument --cache-dir: "),
        (["--test", str(test), "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "labels.csv"),
          "--report-dir", str(tmp_path / "r")], "is the --labels file"),
        (["--test", str(test), "--out", str(tmp_path / "x.csv"), "--report-dir", str(test / "report")], "is in the input folder"),
        (["--demo", "--dataset", str(tmp_path / "Dataset"), "--out", str(tmp_path / "x.csv"),
          "--report-dir", str(tmp_path / "Dataset" / "train" / "var16")], "is in the input folder"),
    ]:
        try:
            status = run_main(submission.main, argv)
        except SystemExit as stopped:  # the parser's refusals
            status = stopped.code
        assert status == USER_ERROR_STATUS, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and message in err, err
    assert (tmp_path / "labels.csv").read_text() == "image_name,label\n" and not (tmp_path / "Dataset").exists()


def test_output_paths_are_made_when_missing_and_refused_when_unwritable(tmp_path):
    import argparse
    import os

    from cli import output_file, output_file_with, output_folder

    assert output_file(str(tmp_path / "new" / "deeper" / "x.csv")) == tmp_path / "new" / "deeper" / "x.csv"
    assert output_folder(str(tmp_path / "new" / "folder")) == tmp_path / "new" / "folder"
    assert not (tmp_path / "new").exists(), "checking makes nothing"
    with pytest.raises(argparse.ArgumentTypeError, match="expected a name ending in one of .parquet, .csv"):
        output_file_with(".parquet", ".csv")(str(tmp_path / "x.json"))
    assert output_file_with(".parquet", ".csv")(str(tmp_path / "X.CSV")) == tmp_path / "X.CSV"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere: nothing to refuse
            with pytest.raises(argparse.ArgumentTypeError, match="cannot write in"):
                output_file(str(locked / "sub" / "x.csv"))
    finally:
        locked.chmod(0o700)
    if Path("/proc/self").is_dir():  # Linux: no file can be made there, though os.access tells root it can
        with pytest.raises(argparse.ArgumentTypeError, match="cannot write in /proc"):
            output_file("/proc/submission.csv")


def test_an_exclude_folder_or_init_file_that_is_not_there_is_an_error_not_a_skip(tmp_path, capsys):
    """A typo in ``--exclude`` used to turn the leakage check off silently."""
    import inv_decoder

    with pytest.raises(SystemExit) as stopped:
        inv_decoder.main(["--family", "VAR", "--exclude", str(tmp_path / "typo"), "--out", str(tmp_path / "out")])
    assert stopped.value.code == USER_ERROR_STATUS
    assert f"argument --exclude: {tmp_path / 'typo'}: no such folder; give the folders" in capsys.readouterr().err
    assert run_main(inv_decoder.main, ["--family", "VAR", "--init", str(tmp_path / "none.safetensors"),
                                       "--out", str(tmp_path / "out")]) == USER_ERROR_STATUS
    assert "--init" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as stopped:  # past one --seed's generation seeds: refused by the parser
        inv_decoder.main(["--family", "VAR", "--images", str(inv_decoder.MAX_IMAGES + 1), "--out", str(tmp_path / "out")])
    assert stopped.value.code == USER_ERROR_STATUS
    assert f"argument --images: at most {inv_decoder.MAX_IMAGES:,}, got" in capsys.readouterr().err


def test_inv_decoder_checks_its_device_and_compares_every_kind_of_image_file(tmp_path, capsys):
    """``--device gpu`` ended in a traceback; ``--exclude`` hashed only lower-case ``.png`` files,
    so a fine-tuning image saved as ``.PNG`` or ``.bmp`` in a folder to be scored passed the check."""
    import numpy as np
    import torch
    from PIL import Image

    import inv_decoder
    from dataset import pixel_hashes_under

    assert run_main(inv_decoder.main, ["--family", "VAR", "--device", "gpu", "--out", str(tmp_path / "out")]) == USER_ERROR_STATUS
    assert "error: " in capsys.readouterr().err and not (tmp_path / "out").exists()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in ("upper/x.PNG", "bmp/deeper/y.bmp"):
        (tmp_path / name).parent.mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / name)
    expected = inv_decoder._pixel_hashes(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)
    assert len(expected) == 1
    assert pixel_hashes_under([tmp_path / "upper"]) == expected and pixel_hashes_under([tmp_path / "bmp"]) == expected


def test_features_without_the_models_columns_name_what_is_missing(tmp_path):
    import numpy as np
    import pandas as pd

    from cli import InputError
    from provenance import FamilyGate

    gate = FamilyGate(signals={"VAR": "combined", "RAR": "combined"}, thresholds={"VAR": np.log(1e-3), "RAR": np.log(1e-1)})
    with pytest.raises(InputError, match=r"lack 1 of the 2 columns the model was fitted on \(RAR_combined\)"):
        gate.predict(pd.DataFrame({"VAR_combined": [1e-4]}))
