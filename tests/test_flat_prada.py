"""PRADA's score functions (``flat_prada.py``) on synthetic per-token log-likelihoods.

Each synthetic variant gives its own images a guidance signature — conditional log-likelihoods
above the unconditional ones by a margin, on one scale more than the others — and outlier images
none; a second variant gives the first one's images half its own margin. The tests check that
the score learns the signature, that attribution takes the variant of highest score and names
``outlier`` when no score is above 0, that the scale weights and ``α`` are learned, and that a
fitted classifier saves, loads and reruns to the same numbers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from attribution import bundle_exists, fit_bundle, load_bundle, predict
from flat_prada import PradaClassifier, PradaScore, stage_sizes_of, token_arrays
from models.registry import VARIANT_NAMES

STAGES = [1, 4, 9]  # 14 tokens in three scales, as VAR's first three
L = sum(STAGES)
EPOCHS = 300


def _frame(labels, seed: int) -> pd.DataFrame:
    """Per-token columns for every variant: ``var16`` images carry var16's signature (a margin of
    1 nat on the last scale, 0.2 elsewhere) under var16 and half of it under var20; ``var20``
    images the same with the roles swapped; outliers none."""
    rng = np.random.default_rng(seed)
    columns = {}
    for variant in VARIANT_NAMES:
        cond, uncond = [], []
        for label in labels:
            u = rng.normal(-4.0, 0.6, L).astype(np.float32)
            margin = np.r_[np.full(5, 0.2), np.full(9, 1.0)].astype(np.float32)
            if label == variant:
                shift = margin
            elif {label, variant} == {"var16", "var20"}:
                shift = 0.5 * margin
            else:
                shift = np.zeros(L, np.float32)
            cond.append(u + shift + rng.normal(0, 0.3, L).astype(np.float32))
            uncond.append(u)
        columns[f"{variant}_cond"], columns[f"{variant}_uncond"] = cond, uncond
    return pd.DataFrame(columns, index=pd.Index([f"img{i}" for i in range(len(labels))], name="image_id"))


LABELS = ["var16"] * 40 + ["var20"] * 40 + ["outlier"] * 40


@pytest.fixture(scope="module")
def fitted():
    train, test = _frame(LABELS, 0), _frame(LABELS, 1)
    sizes = {v: STAGES for v in VARIANT_NAMES}
    return PradaClassifier(sizes, seed=0, epochs=EPOCHS).fit(train, LABELS), test


def test_score_learns_the_guidance_signature_and_weights_the_telling_scale():
    frame = _frame(["var16"] * 40 + ["outlier"] * 40, 2)
    cond, uncond = token_arrays(frame, "var16")
    torch.manual_seed(0)
    score = PradaScore(STAGES)
    losses = score.fit(cond, uncond, torch.tensor([1] * 40 + [0] * 40), epochs=EPOCHS)
    assert losses[-1] < 0.5 * losses[0]
    held_out = _frame(["var16"] * 40 + ["outlier"] * 40, 3)
    with torch.no_grad():
        s = score(*token_arrays(held_out, "var16")).numpy()
    assert (s[:40] > 0).mean() > 0.9 and (s[40:] < 0).mean() > 0.9
    weights = score.stage_weights.detach().numpy()
    assert weights[2] > weights[0], "the scale with the larger margin should weigh more"
    assert float(score.alpha.detach()) != 1.0, "alpha is learned"


def test_attribution_takes_the_highest_score_and_rejects_below_zero(fitted):
    model, test = fitted
    assert set(model.scores) == {"var16", "var20"}, "variants without training images get no score function"
    predicted = model.predict(test).to_numpy()
    truth = np.asarray(LABELS)
    for label in ("var16", "var20", "outlier"):
        assert (predicted[truth == label] == label).mean() > 0.8, label
    scores = model.decision_scores(test)
    assert list(scores.columns) == ["var16", "var20"] and (scores.max(axis=1) > 0).eq(predicted != "outlier").all()


def test_same_seed_same_scores_and_a_saved_model_reloads(fitted, tmp_path):
    model, test = fitted
    again = PradaClassifier({v: STAGES for v in VARIANT_NAMES}, seed=0, epochs=EPOCHS).fit(_frame(LABELS, 0), LABELS)
    pd.testing.assert_frame_equal(again.decision_scores(test), model.decision_scores(test))
    model.save(tmp_path / "prada.joblib")
    assert (tmp_path / "prada.json").is_file()
    pd.testing.assert_frame_equal(PradaClassifier.load(tmp_path / "prada.joblib").decision_scores(test), model.decision_scores(test))


def test_needs_outlier_images_and_consistent_scales():
    frame = _frame(["var16"] * 4, 0)
    with pytest.raises(ValueError, match="outlier"):
        PradaClassifier({v: STAGES for v in VARIANT_NAMES}).fit(frame, ["var16"] * 4)
    with pytest.raises(ValueError, match="scales"):
        stage_sizes_of(frame, [1, 2, 4])  # 21 tokens, not 14
    sizes = stage_sizes_of(frame, [1, 2, 3])
    assert sizes["var16"] == STAGES and sizes["rarb"] == [L]
    # a frame without some variants' columns was a KeyError traceback in flat_prada.py
    from cli import InputError

    with pytest.raises(InputError, match="no per-token column of 2 variant\\(s\\) \\(var24_cond, rarl_cond\\)"):
        stage_sizes_of(frame.drop(columns=[c for c in frame.columns if c.startswith(("var24_", "rarl_"))]), [1, 2, 3])


def test_prada_bundle_through_attribution(tmp_path):
    train, val = _frame(LABELS, 0), _frame(LABELS, 1)
    folder = tmp_path / "prada-bundle"
    bundle = fit_bundle("prada", train, LABELS, val, LABELS, folder, stage_sizes={v: STAGES for v in VARIANT_NAMES})
    assert bundle_exists("prada", folder) and not bundle_exists("flat", folder)
    pd.testing.assert_series_equal(predict(load_bundle("prada", folder), val), predict(bundle, val))
    with pytest.raises(ValueError, match="stage_sizes"):
        fit_bundle("prada", train, LABELS, val, LABELS, tmp_path / "other")


def test_fitting_touches_no_gpu(monkeypatch):
    """The score functions train on the CPU. ``fork_rng()`` without ``devices`` saves and restores
    the generator of every GPU torch sees, starting CUDA on each (with a warning where there are
    several): in a ``--device cuda`` run, and in a ``--device cpu`` one on a GPU machine alike."""
    def read_a_gpu(*args, **kwargs):
        raise AssertionError("a GPU's random state was read")

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", read_a_gpu)
    labels = ["var16", "outlier"] * 3
    PradaClassifier({v: STAGES for v in VARIANT_NAMES}, epochs=2).fit(_frame(labels, 1), labels)
