"""The demo-zoo build is reproducible: same seed → same weight hashes, checked on the ``--quick`` plan
(the full plan runs the same code with more steps), and an ``--only`` rebuild of the variants sees the
same tokens as a full build."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_demo_zoo  # noqa: E402


def test_quick_build_is_reproducible(tmp_path):
    sums = []
    for name in ("a", "b"):
        build_demo_zoo.build(tmp_path / name, seed=0, quick=True, progress=False)
        sums.append((tmp_path / name / "SHA256SUMS").read_text())
    assert sums[0] == sums[1]
    assert len(sums[0].splitlines()) == 12  # 3 tokenizers + 8 variants + the outlier IAR


def test_only_rebuild_matches_the_full_build(tmp_path):
    """Retraining variants with ``only`` on the saved (float16) tokenizers gives the full build's weights,
    because the full build tokenizes with its tokenizer rounded as shipped."""
    out = tmp_path / "zoo"
    build_demo_zoo.build(out, seed=0, quick=True, progress=False)
    full = (out / "SHA256SUMS").read_text()
    build_demo_zoo.build(out, seed=0, quick=True, progress=False, only=["var20", "rarl"])
    assert (out / "SHA256SUMS").read_text() == full


def test_as_shipped_rounds_to_float16_in_place():
    layer = torch.nn.Linear(3, 3)
    with torch.no_grad():
        layer.weight.fill_(0.1)
    build_demo_zoo._as_shipped(layer)
    assert layer.weight.dtype == torch.float32
    assert torch.equal(layer.weight, torch.full((3, 3), 0.1).half().float())
