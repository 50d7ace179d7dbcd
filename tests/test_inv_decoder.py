"""Inverse-decoder fine-tuning lowers its loss, resumes exactly, and loads back strictly."""
from __future__ import annotations

import pytest
import torch

import inv_decoder
import inv_decoder_data
from models.checkpoints import CheckpointError
from models.zoo import load_family

CFG = dict(images=12, epochs=2, batch_size=6, lr=3e-3, seed=0)


def _weights(adapter):
    return {k: v.clone() for k, v in adapter.tokenizer.encoder.state_dict().items()}


def test_finetune_lowers_loss_and_resume_is_exact(small_zoo_dir, tmp_path, monkeypatch):
    straight = load_family("RAR", small_zoo_dir)
    summary = inv_decoder.finetune(straight, tmp_path / "straight", CFG, progress=False)
    assert summary["train_images"] == 12
    assert summary["losses"][1] < summary["losses"][0]
    assert (tmp_path / "straight" / "loss_curve.png").stat().st_size > 0

    resumed = load_family("RAR", small_zoo_dir)
    inv_decoder.finetune(resumed, tmp_path / "resumed", dict(CFG, epochs=1), progress=False)
    fresh = load_family("RAR", small_zoo_dir)  # a new process would start from the original weights
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    inv_decoder.finetune(fresh, tmp_path / "resumed", CFG, progress=False)
    monkeypatch.undo()
    assert len(steps) == 2, "resumed at the second epoch (12 images, batches of 6), not trained again from the start"
    for key, value in _weights(straight).items():
        assert torch.allclose(value, _weights(fresh)[key], atol=1e-6), key

    loaded = inv_decoder.load_inverse_decoder(load_family("RAR", small_zoo_dir), tmp_path / "straight" / "inv_decoder.safetensors")
    for key, value in _weights(straight).items():
        assert torch.equal(value, _weights(loaded)[key])

    # a folder of another run is not taken for this one's: other settings, or other training images
    with pytest.raises(RuntimeError, match=r"checkpoint.pt was trained with other settings \(lr\)"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "straight", dict(CFG, lr=1e-3), progress=False)
    with pytest.raises(RuntimeError, match="holds 12 fine-tuning images, not the 18 asked for"):
        inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "straight", dict(CFG, images=18), progress=False)


def test_var_prefixes_include_quant_conv(small_zoo_dir):
    assert inv_decoder.encoder_state_prefixes(load_family("VAR", small_zoo_dir)) == ["encoder.", "quant_conv."]


def test_wrong_family_file_is_refused(small_zoo_dir, tmp_path):
    adapter = load_family("RAR", small_zoo_dir)
    inv_decoder.finetune(adapter, tmp_path / "r", dict(CFG, epochs=1, images=6), progress=False)
    with pytest.raises(CheckpointError, match="not an inverse decoder"):
        inv_decoder.load_inverse_decoder(load_family("VAR", small_zoo_dir), tmp_path / "r" / "inv_decoder.safetensors")


def test_init_continues_from_an_inverse_decoder(small_zoo_dir, tmp_path):
    """``init`` starts from a fine-tuned file (the augmented zoo decoders continue the plain ones)."""
    import hashlib
    import json

    first = inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "first", CFG, progress=False)
    init = tmp_path / "first" / "inv_decoder.safetensors"
    same = load_family("RAR", small_zoo_dir)
    inv_decoder.finetune(same, tmp_path / "same", dict(CFG, epochs=0, init=init), progress=False)
    for key, value in _weights(inv_decoder.load_inverse_decoder(load_family("RAR", small_zoo_dir), init)).items():
        assert torch.equal(value, _weights(same)[key]), key
    cont = inv_decoder.finetune(load_family("RAR", small_zoo_dir), tmp_path / "cont",
                                dict(CFG, epochs=1, init=init, augment=True, schedule=[["weak", 1]]), progress=False)
    assert cont["losses"][0] < first["losses"][0]  # it starts where the first run ended, not from the encoder
    recorded = json.loads((tmp_path / "cont" / "inv_decoder.json").read_text())["config"]["init"]
    assert recorded == {"file": "first/inv_decoder.safetensors", "sha256": hashlib.sha256(init.read_bytes()).hexdigest()}
    assert "init" not in json.loads((tmp_path / "first" / "inv_decoder.json").read_text())["config"]


def test_a_run_fine_tuned_on_a_gpu_resumes_where_there_is_none(small_zoo_dir, tmp_path):
    """``checkpoint.pt`` of a run on ``--device cuda`` holds Adam's moments as CUDA tensors: read
    back without ``map_location`` where torch sees no GPU (another node, a CPU-only torch), it
    stopped the resumed run with torch's "Attempting to deserialize object on a CUDA device"."""
    import torch.serialization

    out = tmp_path / "run"
    inv_decoder.finetune(load_family("RAR", small_zoo_dir), out, dict(CFG, epochs=1), progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # what a GPU's tensors are saved with
        torch.save(state, out / "checkpoint.pt")
    assert len(inv_decoder.finetune(load_family("RAR", small_zoo_dir), out, CFG, progress=False)["losses"]) == 2


def test_generation_stopped_part_way_resumes_at_its_batch(small_zoo_dir, tmp_path, monkeypatch):
    """Fine-tuning data are kept batch by batch while they are made: a run stopped after two of its
    three batches generates only the third, and gets the tokens of a run never stopped; batches
    kept for another run (here another seed) are refused."""
    monkeypatch.setattr(inv_decoder_data, "GENERATION_BATCH", 2)
    adapter = load_family("RAR", small_zoo_dir)
    digest = adapter.weights_digest
    straight = inv_decoder_data.training_tokens(adapter, tmp_path / "a" / "train_tokens.pt", 0, 6, digest, progress=False)
    real, seeds = adapter.generate, []

    def generate(variant, labels, seed, stop_after=None):
        if len(seeds) == stop_after:
            raise KeyboardInterrupt
        seeds.append(seed)
        return real(variant, labels, seed)

    path = tmp_path / "b" / "train_tokens.pt"
    parts = inv_decoder_data.parts_folder(path)
    monkeypatch.setattr(adapter, "generate", lambda *a: generate(*a, stop_after=2))
    with pytest.raises(KeyboardInterrupt):
        inv_decoder_data.training_tokens(adapter, path, 0, 6, digest, progress=False)
    assert not path.exists() and len(list(parts.glob("*.pt"))) == 2
    with pytest.raises(CheckpointError, match=r"train_tokens.parts holds fine-tuning batches made for another run \(seed differ\).*remove it"):
        inv_decoder_data.training_tokens(adapter, path, 1, 6, digest, progress=False)
    seeds.clear()
    monkeypatch.setattr(adapter, "generate", generate)
    resumed = inv_decoder_data.training_tokens(adapter, path, 0, 6, digest, progress=False)
    assert seeds == [inv_decoder_data.SEED_OFFSET + 2], "only the third batch generated"
    assert torch.equal(resumed, straight) and len(resumed) == 6
    assert not parts.exists() and torch.equal(torch.load(path, weights_only=True)["tokens"], straight)
    parts.mkdir()  # a run stopped after writing the tokens, before removing its batches: they go on the next read
    assert torch.equal(inv_decoder_data.training_tokens(adapter, path, 0, 6, digest, progress=False), straight) and not parts.exists()
