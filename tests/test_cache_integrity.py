"""A cached inverse decoder, its fine-tuning data and checkpoint, a cached variant net and the variant
nets' map cache are only ever reused for the run, weights and inverse decoder that made them; files
are written so that a kill leaves no half file and no record that describes another file."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import inv_decoder
import variant_net as vn
from models.checkpoints import CheckpointError
from models.zoo import load_family

CFG = dict(images=6, epochs=1, batch_size=6, lr=3e-3, seed=0)
TINY_NET = dict(images_per_variant=4, gen_batch=4, epochs=1, batch_size=8, members=1)


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


def test_a_kill_between_the_record_and_the_weights_is_finished_not_taken(small_zoo_dir, tmp_path, monkeypatch):
    """A fine-tuning stopped after its record, before its weights: the older weights left beside the
    newer record (or none) never pass for the file it names. The next use writes that file from the
    checkpoint, whatever its own fine-tuning settings and without fine-tuning; with no checkpoint to
    write it from, the pair is refused, naming both files."""
    import atomic

    path = inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG)
    one_epoch = path.read_bytes()
    original = atomic.atomic_path

    def killed_at_the_weights(target, *args, **kwargs):
        if str(target).endswith(inv_decoder.WEIGHTS_FILE):
            raise KeyboardInterrupt
        return original(target, *args, **kwargs)

    def stop_twice():  # continued for a second epoch (as `inv_decoder.py --epochs 2` would), stopped while saving
        monkeypatch.setattr(inv_decoder, "atomic_path", killed_at_the_weights)
        with pytest.raises(KeyboardInterrupt):
            inv_decoder.finetune(load_family("RAR", small_zoo_dir), path.parent, dict(CFG, epochs=2), progress=False)
        monkeypatch.setattr(inv_decoder, "atomic_path", original)

    stop_twice()
    record = json.loads((path.parent / "inv_decoder.json").read_text())
    assert len(record["losses"]) == 2 and path.read_bytes() == one_epoch
    monkeypatch.setattr(inv_decoder, "finetune", lambda *a, **k: pytest.fail("fine-tuned again"))
    for fine_tune_missing in (False, True):  # a side-by-side job finishes it too: no fine-tuning needed
        assert inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG,
                                                  fine_tune_missing=fine_tune_missing) == path
        assert inv_decoder.file_sha256(path) == record["inv_decoder_sha256"] and path.read_bytes() != one_epoch
    two_epochs = path.read_bytes()
    monkeypatch.undo()

    path.write_bytes(one_epoch)  # the older file again, and no checkpoint to write the named one from
    (path.parent / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match=r"inv_decoder.json describes another inverse decoder .* than .*inv_decoder.safetensors"
                                              r".*checkpoint.pt cannot rebuild it: remove .* or put back the file the record names"):
        inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG)
    path.write_bytes(two_epochs)
    assert inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG) == path


def test_a_first_fine_tuning_stopped_while_saving_is_finished_from_its_checkpoint(small_zoo_dir, tmp_path, monkeypatch):
    """No weights at all beside the record: written from the checkpoint, not fine-tuned again."""
    import atomic

    out = tmp_path / "inv" / "RAR"
    original = atomic.atomic_path
    monkeypatch.setattr(inv_decoder, "atomic_path", lambda target, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
                        if str(target).endswith(inv_decoder.WEIGHTS_FILE) else original(target, *a, **k))
    with pytest.raises(KeyboardInterrupt):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), out, dict(CFG, epochs=2), progress=False)
    monkeypatch.undo()
    assert not (out / inv_decoder.WEIGHTS_FILE).exists()
    monkeypatch.setattr(inv_decoder, "finetune", lambda *a, **k: pytest.fail("fine-tuned again"))
    path = inv_decoder.ensure_inverse_decoder("RAR", small_zoo_dir, tmp_path / "inv", config=CFG, fine_tune_missing=False)
    assert inv_decoder.file_sha256(path) == json.loads((out / "inv_decoder.json").read_text())["inv_decoder_sha256"]


# ---------------------------------------------------------------- variant nets: the cache, the names, the two files
def test_a_cached_variant_net_serves_only_its_weights_and_inverse_decoder(small_zoo_dir, tmp_path):
    """A net trained under a cache folder is refused for other weights and for another inverse decoder
    (the one refitted after cache/inv_decoder was deleted)."""
    inverse = inv_decoder.inverse_adapter("VAR", small_zoo_dir, tmp_path / "inv", config=CFG)
    vn.ensure_variant_net("VAR", small_zoo_dir, tmp_path / "nets", inverse, TINY_NET, progress=False)  # found again: test_variant_net

    shutil.rmtree(tmp_path / "inv")  # the inverse decoder refitted, here with another seed
    refitted = inv_decoder.inverse_adapter("VAR", small_zoo_dir, tmp_path / "inv", config=dict(CFG, seed=1))
    with pytest.raises(CheckpointError, match=r"variant_net.safetensors was trained on another inverse decoder's maps.*another --cache-dir"):
        vn.ensure_variant_net("VAR", small_zoo_dir, tmp_path / "nets", refitted, TINY_NET, progress=False)

    other = _other_weights(small_zoo_dir, tmp_path, "var_gen.safetensors")
    from safetensors.torch import save_file

    save_file(inv_decoder.encoder_state(inverse), str(tmp_path / "kept.safetensors"))  # the same inverse decoder, other weights
    on_other = inv_decoder.load_inverse_decoder(load_family("VAR", other), tmp_path / "kept.safetensors")
    with pytest.raises(CheckpointError, match=r"was trained on other weights than the ones in use"):
        vn.ensure_variant_net("VAR", other, tmp_path / "nets", on_other, TINY_NET, progress=False)


def test_a_net_for_other_variants_is_refused_on_load(tmp_path):
    """``load_variant_net(path, variants)``: a net whose outputs name other variants (another zoo's) is refused, naming the file."""
    net, _ = vn.train_variant_net(torch.randn(8, 4, 8, 8), torch.arange(8) % 2, 2, dict(epochs=1, batch_size=4), progress=False)
    path = vn.save_variant_net(net, ["var16", "var20"], tmp_path / vn.WEIGHTS_FILE)
    assert vn.load_variant_net(path, ("var16", "var20"))[1] == ["var16", "var20"]
    with pytest.raises(CheckpointError, match=r"variant_net.safetensors names the variants var16, var20, not this family's var20, var16"):
        vn.load_variant_net(path, ("var20", "var16"))


def test_a_kill_between_a_nets_two_files_never_leaves_a_record_of_another_net(small_zoo_dir, tmp_path, monkeypatch):
    """Saving a net over an older one and stopping after the first of its two files: the pair left
    must not pass for one net (its record's counts would start the held-out set inside training data)."""
    import atomic

    inverse = load_family("VAR", small_zoo_dir)
    names = list(inverse.variant_names)
    x, y = torch.randn(8, 4, 8, 8), torch.zeros(8, dtype=torch.long)
    old, _ = vn.train_variant_net(x, y, len(names), dict(epochs=1, batch_size=4), progress=False)
    new, _ = vn.train_variant_net(x, y, len(names), dict(epochs=1, batch_size=4, seed=1), progress=False)
    path = tmp_path / "net" / vn.WEIGHTS_FILE
    vn.save_variant_net(old, names, path, {"config": dict(images_per_variant=8, gen_batch=4)})
    replace, calls = os.replace, []

    def killed_after_the_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        vn.save_variant_net(new, names, path, {"config": dict(images_per_variant=4, gen_batch=4)})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"variant_net.json describes another net than .*variant_net.safetensors"):
        vn.heldout_maps(inverse, path, 1, progress=False)


# ---------------------------------------------------------------- the variant nets' map cache
def test_the_map_cache_is_named_by_code_version_and_layout(small_zoo_dir, tmp_path):
    """Maps made in channels-last layout (the feature extractor's, which rounds differently) are kept
    apart from the default layout's, and every folder names the maps' code version."""
    adapter = load_family("VAR", small_zoo_dir)
    plain = vn.generate_training_maps(adapter, 2, 0, 2, progress=False, cache_dir=tmp_path)
    adapter.use_channels_last()
    fast = vn.generate_training_maps(adapter, 2, 0, 2, progress=False, cache_dir=tmp_path)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2, "one folder per layout"
    assert all(f"-v{vn.MAPS_VERSION}" in name for name in folders)
    assert vn.maps_folder_name(adapter) in folders and vn.maps_folder_name(adapter).endswith("-channels_last")
    torch.testing.assert_close(fast.x_NChw, plain.x_NChw, rtol=0, atol=1e-3)
