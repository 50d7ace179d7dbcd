"""The generation seeds of the demo Dataset, the inverse decoders' fine-tuning data and the variant
nets' maps stay in ranges of their own for any option values, and a plan that would leave its range
is refused before anything is generated."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import inv_decoder  # noqa: E402
import make_demo_dataset  # noqa: E402
from cli import InputError  # noqa: E402


def _last_seed(seed: int, counts: dict) -> int:
    jobs = make_demo_dataset.plan_jobs(seed, counts)
    split_i, split, cls, first = jobs[-1]
    n = counts[split] if cls in make_demo_dataset.VARIANT_NAMES else make_demo_dataset._thirds(counts[split])[2]
    return first + make_demo_dataset._batches(n) - 1


def test_a_demo_dataset_too_large_for_its_seed_range_is_refused():
    """Large --train/--val/--test would run the last --seed's generation seeds into the fine-tuning
    data's (inv_decoder.SEED_OFFSET on), and any --seed's into the next one's."""
    last = make_demo_dataset.SEEDS[-1]
    fits = {"train": 300_000, "val": 150_000, "test": 150_000}  # exactly 100 000 batches
    assert _last_seed(last, fits) < inv_decoder.SEED_OFFSET
    too_many = dict(fits, test=150_050)
    with pytest.raises(InputError, match="generation batches"):
        make_demo_dataset.plan_jobs(last, too_many)
    with pytest.raises(InputError, match="generation batches"):
        make_demo_dataset.plan_jobs(0, too_many)


def test_the_command_refuses_such_counts_before_any_work(tmp_path):
    with pytest.raises(InputError, match="generation batches"):
        make_demo_dataset.main(["--out", str(tmp_path / "ds"), "--train", "700000", "--no-progress", "--workers", "1"])
    assert not (tmp_path / "ds").exists()


class _Generated(Exception):
    pass


def test_variant_net_maps_past_their_seed_range_are_refused_before_generating(monkeypatch):
    """More batches per variant than generation_seed has seeds for (10 000): refused up front, not
    when the first variant's 10 001st batch is reached (hours of generation later); so are held-out
    batches that would start past the range."""
    import variant_net_maps
    from models.zoo import load_family

    adapter = load_family("VAR")

    def generate(*args, **kwargs):
        raise _Generated

    monkeypatch.setattr(adapter, "generate", generate)
    with pytest.raises(InputError, match="batches up to 10,000"):
        variant_net_maps.generate_training_maps(adapter, 10_001 * 64, gen_batch=64, progress=False)
    with pytest.raises(InputError, match="from batch 9,999|from batch 9999"):
        variant_net_maps.generate_training_maps(adapter, 65, gen_batch=64, progress=False, first_batch=9_999)
    with pytest.raises(_Generated):  # the last batch that fits is allowed
        variant_net_maps.generate_training_maps(adapter, 10_000 * 64, gen_batch=64, progress=False)


@pytest.mark.parametrize("family", ["VAR", "RAR"])
def test_exclude_finds_every_fine_tuning_image_among_the_images_to_score(family, tmp_path):
    """``inv_decoder.py --exclude``: the fine-tuning generations written as PNG files the way the
    demo Dataset writes its images (the sampler's own images, 8-bit) are all found."""
    from PIL import Image

    from augmentation import to_uint8_arrays
    from models.zoo import load_family

    adapter = load_family(family)
    n = 8
    per_variant = n // len(adapter.variant_names)
    folder = tmp_path / "to_score"
    folder.mkdir()
    for job_i, variant in enumerate(adapter.variant_names):  # generate_training_tokens' jobs: one batch per variant here
        seed = inv_decoder.SEED_OFFSET + job_i
        images = adapter.generate(variant, adapter.random_labels(per_variant, seed), seed)[0]
        for k, array in enumerate(to_uint8_arrays(images)):
            Image.fromarray(array).save(folder / f"{variant}_{k}.png")
    with pytest.raises(InputError, match=f"^{n} fine-tuning images also appear"):
        inv_decoder.finetune(load_family(family), tmp_path / "inv", dict(images=n, epochs=1, batch_size=8, seed=0),
                             exclude_folders=[folder], progress=False)


def test_diagnose_variant_net_checks_its_whole_plan_before_generating(tmp_path, monkeypatch, capsys):
    """Its held-out batches follow its training ones; a plan whose last batch has no seed of its own
    (or a --seed outside variant_net_maps.SEEDS) is a parser error before the first generation,
    not a ValueError after every training batch was generated."""
    import diagnose_variant_net
    from models.rar_adapter import RARAdapter

    def generate(*args, **kwargs):
        raise _Generated

    monkeypatch.setattr(RARAdapter, "generate", generate)
    common = ["--family", "RAR", "--cache", "", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        diagnose_variant_net.main(common + ["--train-per-variant", str(9_999 * 64), "--heldout-per-variant", "128"])
    assert stop.value.code == 2 and "10,001 generation batches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        diagnose_variant_net.main(common + ["--seed", "10"])


def test_diagnose_variant_net_checks_its_plan_before_it_fine_tunes_an_inverse_decoder(tmp_path, monkeypatch, capsys):
    """A plan past the seed range is refused before the inverse decoder is loaded: with weights that
    ship none, ``inv_decoder.inverse_adapter`` fine-tunes one first (hours on the official models),
    and the parser error came only after it."""
    import diagnose_variant_net

    def fine_tune(*args, **kwargs):
        raise _Generated

    monkeypatch.setattr(diagnose_variant_net.inv_decoder, "inverse_adapter", fine_tune)
    common = ["--family", "RAR", "--cache", "", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        diagnose_variant_net.main(common + ["--seed", "10"])
    assert stop.value.code == 2 and "--seed 10" in capsys.readouterr().err


def test_variant_net_py_checks_its_plan_before_fine_tuning_and_training(tmp_path, monkeypatch, capsys):
    """``variant_net.py --eval-generations N`` generates its held-out maps after the training ones: a
    plan whose last batch has no seed is refused before the inverse decoder is loaded (fine-tuned
    first where the weights ship none) and before the net is trained, not after both."""
    import variant_net

    def fine_tune(*args, **kwargs):
        raise _Generated

    monkeypatch.setattr(inv_decoder, "inverse_adapter", fine_tune)
    common = ["--family", "VAR", "--out", str(tmp_path / "nets"), "--images-per-variant", "64"]
    with pytest.raises(SystemExit) as stop:
        variant_net.main(common + ["--eval-generations", str(10_000 * variant_net.default_config("VAR")["gen_batch"])])
    assert stop.value.code == 2 and "generation batches" in capsys.readouterr().err
    with pytest.raises(_Generated):  # the last batch that fits is allowed
        variant_net.main(common + ["--eval-generations", str(9_999 * variant_net.default_config("VAR")["gen_batch"])])
