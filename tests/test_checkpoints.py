"""Weight files are read safely and loaded strictly, with errors that name the file and keys."""
from __future__ import annotations

import pytest
import torch

from models.checkpoints import CheckpointError, load_strict, read_state_dict
from models.registry import build_rar_generator
from models.zoo import load_family

GEN_CFG = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               image_seq_len=4, condition_num_classes=3, codebook_size=8)


def test_pth_roundtrip_and_wrapped_state_dict(tmp_path):
    model = build_rar_generator(GEN_CFG, {})
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.bin"
    torch.save(model.state_dict(), plain)
    torch.save({"state_dict": model.state_dict(), "epoch": torch.tensor(3)}, wrapped)
    for path in (plain, wrapped):
        state = read_state_dict(path)
        assert set(state) == set(model.state_dict())
        load_strict(build_rar_generator(GEN_CFG, {}), state, str(path))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(1), "obj": object()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_state_dict(path)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nothing.pth"):
        read_state_dict(tmp_path / "nothing.pth")


def test_strict_errors_name_keys_and_source():
    model = build_rar_generator(GEN_CFG, {})
    state = dict(model.state_dict())
    state.pop("lm_head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["cls_token"] = torch.zeros(1, 1, 99)
    with pytest.raises(CheckpointError) as info:
        load_strict(build_rar_generator(GEN_CFG, {}), state, "some/file.bin")
    message = str(info.value)
    for needle in ("some/file.bin", "missing keys (1): lm_head.bias", "unexpected keys (1): extra.weight", "cls_token"):
        assert needle in message


def test_official_weights_dir_reports_the_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="vae_ch160v4096z32.pth"):
        load_family("VAR", weights_dir=tmp_path)
