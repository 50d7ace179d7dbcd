"""The registry builds every official model with exactly the published state-dict keys and shapes."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import REFERENCE
from models.registry import (OFFICIAL_VARIANTS, build_maskgit_vqgan, build_rar_generator, build_var_transformer,
                             build_var_vae)

MANIFEST = json.loads((REFERENCE / "official_state_dict_manifest.json").read_text())


def _official_modules():
    """manifest entry name → (builder, config) for every entry, from the registry only."""
    entries = {}
    for variant in OFFICIAL_VARIANTS.values():
        tok_cfg, gen_cfg = variant["tokenizer"], variant["generator"]
        if variant["family"] == "VAR":
            entries[variant["manifest"]["tokenizer"]] = lambda c=tok_cfg: build_var_vae(c)
            entries[variant["manifest"]["generator"]] = lambda g=gen_cfg, c=tok_cfg: build_var_transformer(g, c)
        else:
            entries[variant["manifest"]["tokenizer"]] = lambda c=tok_cfg: build_maskgit_vqgan(c)
            entries[variant["manifest"]["generator"]] = lambda g=gen_cfg, c=tok_cfg: build_rar_generator(g, c)
    return entries


def test_registry_covers_the_whole_manifest():
    assert set(_official_modules()) == set(MANIFEST)


@pytest.mark.parametrize("entry", sorted(MANIFEST))
def test_state_dict_matches_manifest(entry):
    with torch.device("meta"):
        module = _official_modules()[entry]()
    ours = {k: list(v.shape) for k, v in module.state_dict().items()}
    expected = MANIFEST[entry]
    assert sorted(set(expected) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(expected)) == [], "keys our model has but the checkpoint lacks"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
