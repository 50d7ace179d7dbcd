"""A cached inverse decoder, its fine-tuning data and checkpoint are only ever reused for the run and
weights that made them; its files are written so that a kill leaves no half file."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import inv_decoder
from models.checkpoints import CheckpointError
from models.zoo import load_family

CFG = dict(images=6, epochs=1, batch_size=6, lr=3e-3, seed=0)


def _other_weights(zoo, tmp_path, file="rar_gen.safetensors"):
    """A copy of the zoo whose generator ``file`` has one weight changed: other weights, the same tokenizer."""
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other_zoo"
    shutil.copytree(zoo, other)
    tensors = load_file(str(other / file))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, str(other / file))
    return other


# ---------------------------------------------------------------- inverse decoders: a run's data, checkpoint and files; the cache
def test_tokens_of_a_killed_run_are_not_taken_for_another_seed(small_zoo_dir, tmp_path, monkeypatch):
    """Scenario A: a run of seed 0 killed in its first epoch (tokens written, no checkpoint yet);
    a rerun with seed 1 must not fine-tune on seed 0's generations while its record says seed 1."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.optim.Adam, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "run", CFG, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "run" / "train_tokens.pt").is_file() and not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(CheckpointError, match=r"train_tokens.pt holds generations of seed 0, not 1.*remove it.*choose another --out"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "run", dict(CFG, seed=1), progress=False)


def test_a_finished_run_is_not_taken_for_other_weights(small_zoo_dir, tmp_path):
    """Scenario B: a finished run, then other weights into the same folder: neither its tokens nor
    its checkpoint may stand in for a fine-tuning on the new weights."""
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "run", CFG, progress=False)
    other = _other_weights(small_zoo_dir, tmp_path)
    with pytest.raises(CheckpointError, match=r"train_tokens.pt holds generations of other weights.*choose another --out"):
        inv_decoder.finetune(load_family("RAR", other), tmp_path / "run", CFG, progress=False)
    (tmp_path / "run" / "train_tokens.pt").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint.pt was trained with other settings \(weights_digest\)"):
        inv_decoder.finetune(load_family("RAR", other), tmp_path / "run", CFG, progress=False)
    record = json.loads((tmp_path / "run" / "inv_decoder.json").read_text())
    assert record["weights_digest"] == load_family("RAR", small_zoo_dir).weights_digest != load_family("RAR", other).weights_digest


def test_a_checkpoint_encoder_is_loaded_strictly(small_zoo_dir, tmp_path):
    """R1: a checkpoint whose encoder lacks a weight is refused, not half loaded."""
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "run", CFG, progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["encoder"].pop(sorted(state["encoder"])[0])
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is not an inverse decoder.*missing"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "run", dict(CFG, epochs=2), progress=False)


def test_a_checkpoint_of_more_epochs_than_asked_is_refused(small_zoo_dir, tmp_path):
    """R5: resuming a 2-epoch checkpoint with --epochs 1 would train nothing and record 1 epoch."""
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "run", dict(CFG, epochs=2), progress=False)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt holds 2 epochs of fine-tuning, more than the 1 asked for: ask for --epochs 2"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "run", CFG, progress=False)


def test_the_record_is_written_whole_or_not_at_all(small_zoo_dir, tmp_path, monkeypatch):
    """S1: a write of ``inv_decoder.json`` that fails half way (a kill, a full disk) leaves the previous record as it was."""
    import pathlib

    out = tmp_path / "run"
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), out, CFG, progress=False)
    record = (out / "inv_decoder.json").read_text()
    write_text = pathlib.Path.write_text

    def half_written(self, text, *args, **kwargs):
        if self.name.startswith("inv_decoder.json"):
            write_text(self, text[:len(text) // 2])
            raise OSError("disk full")
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", half_written)
    with pytest.raises(OSError, match="disk full"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), out, dict(CFG, epochs=2), progress=False)
    monkeypatch.undo()
    assert (out / "inv_decoder.json").read_text() == record
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_loss_curve_is_written_whole_or_not_at_all(small_zoo_dir, tmp_path, monkeypatch):
    """S1: so does a write of ``loss_curve.png``."""
    import matplotlib.figure

    out = tmp_path / "run"
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), out, CFG, progress=False)
    curve = (out / "loss_curve.png").read_bytes()

    def half_saved(self, fname, *args, **kwargs):
        open(fname, "wb").write(curve[:100])
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_saved)
    with pytest.raises(OSError, match="disk full"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), out, dict(CFG, epochs=2), progress=False)
    assert (out / "loss_curve.png").read_bytes() == curve
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_cached_inverse_decoder_of_other_weights_is_refused(small_zoo_dir, tmp_path):
    """An inverse decoder fine-tuned under a cache folder serves the weights it was fine-tuned on, no others."""
    path = inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG)
    stamp = path.stat().st_mtime_ns
    assert inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG) == path
    assert path.stat().st_mtime_ns == stamp, "found, not fine-tuned again"
    other = _other_weights(small_zoo_dir, tmp_path)
    with pytest.raises(CheckpointError, match=r"inv_decoder.safetensors was fine-tuned on other weights.*remove it.*another --cache-dir"):
        inv_decoder.ensure_inverse_decoder("RAR", other, tmp_path / "inv", config=CFG)
    record_path = path.parent / "inv_decoder.json"
    record = json.loads(record_path.read_text())
    del record["weights_digest"]  # one fine-tuned before the weights were recorded: nothing says which weights
    record_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"has no record of the weights it was fine-tuned on.*another --cache-dir"):
        inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG)
