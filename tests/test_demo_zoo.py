"""The shipped demo zoo: complete, intact, loadable, and its inverse decoders do their job.

Every command defaults to ``demo_zoo/``; these tests guard what a fresh clone gets: the weight
files named by ``SHA256SUMS`` with those hashes (and no others), within the size budget, each
model loading strictly into our architecture, the inverse decoders loading into their
tokenizers — and, the point of the whole toolkit, the VAR and RAR inverse decoders giving their
own family's fresh generations lower round-trip signals (calibrated EncLoss, Combined) than
natural photos no model ever saw. That QuantLoss alone collapses for them, as the paper finds
with the official tokenizers, does not hold on this zoo: that test is marked as an expected
failure, strictly, so it reports the day a better zoo makes it pass.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import inv_decoder
from models.zoo import DEMO_ZOO_DIR, load_family, read_zoo_manifest
from quantizer import search_tokens
from signals import family_signals

ZOO_BUDGET_BYTES = 40 * 2**20
TEST_SEED = 9_000_000  # far from the Dataset's and the fine-tuning data's seed ranges


def _sums() -> dict:
    lines = (DEMO_ZOO_DIR / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line.strip())}


def test_sha256sums_name_every_weight_file_with_its_hash():
    sums = _sums()
    on_disk = {p.relative_to(DEMO_ZOO_DIR).as_posix() for p in DEMO_ZOO_DIR.rglob("*.safetensors")}
    assert set(sums) == on_disk
    for name, digest in sums.items():
        assert hashlib.sha256((DEMO_ZOO_DIR / name).read_bytes()).hexdigest() == digest, name


def test_each_shipped_inverse_decoder_record_names_its_files_bytes():
    """``inv_decoder.json`` beside each shipped inverse decoder is that file's record, not another's."""
    import json

    for path in sorted((DEMO_ZOO_DIR / inv_decoder.SHIPPED_SUBDIR).glob(f"*/{inv_decoder.WEIGHTS_FILE}")):
        record = json.loads((path.parent / inv_decoder.RECORD_FILE).read_text())
        assert record["inv_decoder_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), path


def test_zoo_fits_its_size_budget():
    total = sum(p.stat().st_size for p in DEMO_ZOO_DIR.rglob("*") if p.is_file())
    assert total <= ZOO_BUDGET_BYTES, f"demo_zoo/ holds {total / 2**20:.1f} MiB"


def test_every_model_and_inverse_decoder_loads():
    manifest = read_zoo_manifest()
    assert set(manifest["families"]) == {"VAR", "RAR", "OUTLIER"}
    for family, fam in manifest["families"].items():
        adapter = load_family(family)
        for variant in fam["variants"]:
            generator = adapter.generator(variant)
            assert all(p.dtype == torch.float32 for p in generator.parameters())
        loaded = adapter.loaded_variants
        adapter.release([])  # none named: none released
        assert adapter.loaded_variants == loaded == tuple(fam["variants"])
        adapter.release(loaded[:1])
        assert adapter.loaded_variants == loaded[1:]
        adapter.release()
        assert adapter.loaded_variants == ()
        if family == "OUTLIER":
            continue
        for augment in (False, True):
            inv_decoder.load_inverse_decoder(load_family(family), inv_decoder.shipped_file(DEMO_ZOO_DIR, family, augment))


def _natural_reserved(n: int) -> torch.Tensor:
    import sys

    sys.path.insert(0, str(DEMO_ZOO_DIR.parent / "scripts"))
    import demo_photos

    return demo_photos.crops_tensor(demo_photos.random_crops(demo_photos.RESERVED_PHOTOS, n, seed=TEST_SEED, part="all")[0])


def _shipped_inverse_decoder(family: str):
    """The family's adapter with the zoo's shipped plain inverse decoder."""
    return inv_decoder.load_inverse_decoder(load_family(family), inv_decoder.shipped_file(DEMO_ZOO_DIR, family, False))


def _png_generations(adapter, per_variant: int, seed: int):
    """``per_variant`` fresh generations of every variant, rounded as saved to PNG, and their tokens."""
    images, tokens = [], []
    for v_i, variant in enumerate(adapter.variant_names):
        img, idx, _ = adapter.generate(variant, adapter.random_labels(per_variant, seed + v_i), seed + v_i)
        images.append(inv_decoder.to_png_levels(img))
        tokens.append(idx)
    return torch.cat(images), torch.cat(tokens)


def _own_and_natural_signals(family: str):
    """Signals (inverse decoder) of 4 fresh PNG-rounded generations per variant and of 16 reserved photo crops."""
    adapter = _shipped_inverse_decoder(family)
    own = family_signals(adapter, _png_generations(adapter, 4, TEST_SEED)[0], search_tokens)
    return own, family_signals(adapter, _natural_reserved(16), search_tokens)


@pytest.fixture(scope="module", params=["VAR", "RAR"])
def own_and_natural(request):
    return request.param, _own_and_natural_signals(request.param)


def test_round_trip_signals_separate_own_generations_from_natural_photos(own_and_natural):
    # The raw round trip separates every sample; the calibrated ones only on the whole (with the
    # retrained VAR inverse decoder, 2 of the 16 natural crops score below VAR's worst generation
    # on Combined — calibration hurts against natural photos, as the stage-one table shows).
    family, (own, natural) = own_and_natural
    assert own["enc_loss_raw"].max() < natural["enc_loss_raw"].min(), family
    assert own["enc_loss"].median() * 3 < natural["enc_loss"].median(), family
    assert own["combined"].median() * 3 < natural["combined"].median(), family


@pytest.mark.parametrize("family", ["VAR", "RAR"])
def test_refined_enc_loss_separates_own_generations_from_natural_photos(family):
    """Ten latent steps from the inverse decoder's ``f`` bring the zoo's own (PNG-rounded)
    generations much closer than the plain round trip, and keep every one below every natural crop."""
    from signals import refined_enc_loss

    adapter = _shipped_inverse_decoder(family)
    own_images = _png_generations(adapter, 2, TEST_SEED + 1)[0]
    own, natural = refined_enc_loss(adapter, own_images), refined_enc_loss(adapter, _natural_reserved(8))
    assert own.max() < natural.min(), family
    unrefined = refined_enc_loss(adapter, own_images, steps=0)  # no step: the error of D(D⁻¹(x)) itself
    assert own.median() * 2 < unrefined.median(), family


@pytest.mark.parametrize("family", ["VAR", "RAR"])
def test_colour_correction_brings_saturated_generations_back_into_range(family):
    """After saturation ×2 (an affine colour map, up to clipping), the colour-corrected refined
    EncLoss of the zoo's own generations is far below the plain refined one and far below that of
    natural crops under the same attack."""
    from augmentation import apply_attack
    from signals import colour_refined_enc_loss, refined_enc_loss

    adapter = _shipped_inverse_decoder(family)
    saturate = lambda x: inv_decoder.to_png_levels(apply_attack(x, "saturation", 2.0))  # noqa: E731
    own = saturate(_png_generations(adapter, 2, TEST_SEED + 2)[0])
    corrected = colour_refined_enc_loss(adapter, own).median()
    assert corrected * 5 < refined_enc_loss(adapter, own).median(), family
    assert corrected * 5 < colour_refined_enc_loss(adapter, saturate(_natural_reserved(8))).median(), family


def test_reencoding_recovers_more_of_rars_tokens():
    # The re-encoding correction the feature extractor applies to RAR (1 iteration): on 192 fresh
    # generations it recovers 52 % of the tokens instead of 41 % (scripts/diagnose_zoo.py).
    from batch_features import REENCODE_ITERS
    from signals import reencode_tokens

    adapter = _shipped_inverse_decoder("RAR")
    x, truth = _png_generations(adapter, 8, TEST_SEED + 50)
    with torch.no_grad():
        f = adapter.encode(x)
    plain = (adapter.quantize(f)[0] == truth).float().mean().item()
    corrected = (reencode_tokens(adapter, f, REENCODE_ITERS)[0] == truth).float().mean().item()
    assert corrected > plain + 0.05, (plain, corrected)


@pytest.mark.xfail(strict=True, reason="the demo zoo's small decoders are not invertible enough for QuantLoss to collapse "
                                       "(python scripts/diagnose_zoo.py: few tokens recovered); a better zoo should make this pass")
def test_quant_loss_collapses_for_own_generations(own_and_natural):
    family, (own, natural) = own_and_natural
    column = "quant_loss_searched" if family == "VAR" else "quant_loss"
    assert own[column].median() * 3 < natural[column].median()


@pytest.mark.xfail(strict=True, reason="VAR's token search stops at a local optimum: from the generator's exact f̂, which the "
                                       "true tokens fit at 0, it reads about half of them (scripts/diagnose_zoo.py: "
                                       "fmse_exact_fhat_read); a reader that finds them should make this pass")
def test_var_token_search_reads_the_true_tokens_from_the_exact_fhat():
    adapter = load_family("VAR")
    quant = adapter.tokenizer.quantize
    _, truth, f_hat = adapter.generate("var16", adapter.random_labels(8, TEST_SEED + 60), TEST_SEED + 60)
    with torch.no_grad():
        assert quant.tokens_to_fhat(adapter.split_scales(truth)).sub(f_hat).abs().max() < 1e-5  # the true tokens fit exactly
    found = torch.cat(search_tokens(quant, f_hat).idx_per_scale, dim=1)
    assert (found == truth).float().mean() > 0.95


def test_quantizer_command_line_writes_quant_loss_and_tokens(tmp_path):
    """``python quantizer.py FOLDER``: one row per image, and the QuantLoss of the tokens it saves."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    import quantizer
    from dataset import load_images

    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    names = ["a.png", "sub/b.png", "c.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    out, saved = tmp_path / "ql.csv", tmp_path / "tokens.pt"
    assert quantizer.main([str(tmp_path / "imgs"), "--method", "greedy", "--encoder", "original", "--out", str(out),
                           "--tokens", str(saved), "--batch-size", "2"]) == 0
    frame = pd.read_csv(out, index_col="image_id")
    assert sorted(frame.index) == sorted(names)
    tokens = torch.load(saved, weights_only=True)
    adapter = load_family("VAR")
    assert tokens["tokens"].shape == (3, sum(pn * pn for pn in adapter.patch_nums))
    with torch.no_grad():
        f = adapter.encode(load_images([tmp_path / "imgs" / i for i in tokens["image_ids"]], size=64))
        expected = quantizer.per_image_mse(adapter.tokens_to_fhat(tokens["tokens"]), f)
    assert np.allclose(frame.loc[tokens["image_ids"], "quant_loss"].to_numpy(), expected.numpy(), rtol=1e-5)


def test_diagnose_zoo_command_runs_and_writes_every_row(tmp_path):
    """``scripts/diagnose_zoo.py`` on a few fresh RAR generations: every row of the diagnosis, in range."""
    import sys

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import diagnose_zoo

    assert diagnose_zoo.main(["--per-variant", "3", "--batch-size", "12", "--families", "RAR", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "diagnosis.csv", index_col=0)
    for row in ("token_recovery_inverse", "token_recovery_exact_fhat", "argmin_nll_sampling_oracle_tokens",
                "argmin_nll_evidence_recovered_tokens", "variant_accuracy_recovered_tokens",
                "variant_accuracy_exact_fhat_tokens", "argmin_nll_sampling_exact_fhat_tokens"):
        assert 0 <= table.loc[row, "RAR"] <= 1, row
    assert table.loc["token_recovery_exact_fhat", "RAR"] == 1, "RAR's nearest-code reader gets every token from the exact f̂"
    assert table.loc["token_recovery_exact_fhat_natural", "RAR"] == 1, "… and every greedy token of a natural crop"
    assert table.loc["fmse_exact_fhat_read_natural", "RAR"] == 0
    for stem in ("nll_marginal", "nll_sampling"):  # RAR's exact reader gives the true tokens, so the same scores
        assert table.loc[f"argmin_{stem}_exact_fhat_tokens", "RAR"] == table.loc[f"argmin_{stem}_oracle_tokens", "RAR"]
    per_variant = table.loc[[f"token_recovery_inverse_variant{i}" for i in range(1, 5)], "RAR"]
    assert per_variant.mean() == pytest.approx(table.loc["token_recovery_inverse", "RAR"]), "the variants' rows split the family's"
    assert (table.loc[[f"token_recovery_exact_fhat_variant{i}" for i in range(1, 5)], "RAR"] == 1).all()


def test_diagnose_zoo_var_rows_per_scale_and_prior_guided(tmp_path):
    """``scripts/diagnose_zoo.py --families VAR --guided-weight``: the per-scale rows of both
    readers split the overall recovery, and the prior-guided rows are there and in range."""
    import sys

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import diagnose_zoo

    assert diagnose_zoo.main(["--per-variant", "3", "--batch-size", "12", "--families", "VAR", "--guided-weight", "30",
                              "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "diagnosis.csv", index_col=0)["VAR"]
    sizes = [pn * pn for pn in load_family("VAR").patch_nums]
    for reader in ("inverse", "exact_fhat"):
        per_scale = table[[f"token_recovery_{reader}_scale{k}" for k in range(len(sizes))]].to_numpy()
        assert (per_scale * sizes).sum() / sum(sizes) == pytest.approx(table[f"token_recovery_{reader}"]), reader
    for row in ("token_recovery_guided_exact_fhat", "token_recovery_guided_inverse",
                "argmax_guided_objective_exact_fhat", "argmax_guided_objective_inverse"):
        assert 0 <= table[row] <= 1, row


def test_diagnose_zoo_refuses_seeds_of_other_ranges_and_empty_counts_before_any_work(tmp_path, monkeypatch, capsys):
    """``--seed 100`` would reproduce the variant nets' training generations (9e6 …), more than 100
    batches per variant the next variant's seeds, and a count of 0 would end in a traceback: all are
    refused before any model loads."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import diagnose_zoo
    from cli import InputError

    monkeypatch.setattr(diagnose_zoo, "diagnose_family", lambda *a, **kw: pytest.fail("no model should load"))
    out = ["--out", str(tmp_path)]
    for seed in ("100", "-1"):
        with pytest.raises(InputError, match=rf"--seed {seed}: must be in 0 … 99"):
            diagnose_zoo.main(["--seed", seed] + out)
    with pytest.raises(InputError, match=r"--per-variant 3201 in batches of 32 needs 101 batches per variant; at most 100"):
        diagnose_zoo.main(["--per-variant", "3201"] + out)
    for option in ("--per-variant", "--batch-size"):
        with pytest.raises(SystemExit):
            diagnose_zoo.main([option, "0"] + out)
        assert f"{option}: must be at least 1" in capsys.readouterr().err
