"""The feature extractor's channels-last tokenizers (``FamilyAdapter.use_channels_last``, a CPU
speed-up) compute what the official code computes."""
from __future__ import annotations

import torch

from models.zoo import load_family


def test_channels_last_reproduces_the_official_outputs(small_zoo_dir, var_fixture, rar_fixture):
    var = load_family("VAR", small_zoo_dir).use_channels_last()
    _, t = var_fixture
    rec, tokens, f, f_hat = var.img_to_reconstructed_img((t["in.image"] + 1) / 2)
    assert torch.equal(tokens, torch.cat([t[f"out.idx_scale{k}"] for k in range(4)], dim=1))
    assert torch.allclose(f, t["out.f"], atol=1e-4)
    assert torch.allclose(rec, (t["out.fhat_to_img"] + 1) / 2, atol=1e-4)
    assert f.is_contiguous() and rec.is_contiguous()

    rar = load_family("RAR", small_zoo_dir).use_channels_last()
    _, t = rar_fixture
    rec, tokens, f, f_hat = rar.img_to_reconstructed_img(t["in.image"])
    assert torch.equal(tokens, t["out.codes"])
    assert torch.allclose(rec, t["out.decode"], atol=1e-4)
    assert f.is_contiguous() and rec.is_contiguous()
    assert rar.decoder_modules()[0].conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_can_be_turned_off_again(small_zoo_dir, rar_fixture):
    _, t = rar_fixture
    default = load_family("RAR", small_zoo_dir)
    toggled = load_family("RAR", small_zoo_dir).use_channels_last().use_channels_last(False)
    weight = toggled.decoder_modules()[0].conv_in.weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(toggled.encode(t["in.image"]), default.encode(t["in.image"]))


def test_bench_speedups_times_the_features_as_the_extractor_runs_them(monkeypatch):
    """``scripts/bench_speedups.py`` times ``features_for_batch`` with each extractor's variant nets,
    as the feature extractor passes them (it once timed the batch without the nets' passes)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import bench_speedups

    class Adapter:
        def use_channels_last(self, enabled: bool = True):
            return self

        def encode(self, images):
            return images

        def decode(self, f):
            return f

    class Extractor:
        image_size = 8

        def __init__(self, **kwargs):
            self.adapters = {"VAR": Adapter(), "RAR": Adapter()}
            self.nets = {"VAR": ("net", ["var16"])}

    made, calls = [], []
    monkeypatch.setattr(bench_speedups.feature_extractor, "FeatureExtractor", lambda **kw: made.append(Extractor(**kw)) or made[-1])
    monkeypatch.setattr(bench_speedups, "training_sample", lambda dataset, needed: [])
    monkeypatch.setattr(bench_speedups, "load_images", lambda paths, size=None: torch.zeros(2, 3, size, size))
    monkeypatch.setattr(bench_speedups.batch_features, "features_for_batch",
                        lambda adapters, images, **kw: calls.append((adapters, kw.get("nets"))))
    assert bench_speedups.main(["--rounds", "2", "--threads", str(torch.get_num_threads())]) == 0
    assert len(made) == 2 and len(calls) == 2 * 3  # a warm-up and two rounds of each extractor
    nets_of = {id(extractor.adapters): extractor.nets for extractor in made}
    assert all(nets is nets_of[id(adapters)] for adapters, nets in calls)
