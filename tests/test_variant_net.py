"""Variant nets: learn what tells variants apart, round-trip through their file, do not depend on
batch mates, train from seeds nothing else uses, and the demo zoo's names its VAR variants above chance."""
from __future__ import annotations

import shutil

import pytest
import torch

import variant_net as vn

TINY = dict(images_per_variant=4, gen_batch=4, epochs=2, batch_size=8)


def _toy_maps(n: int, seed: int):
    """Three "variants" whose 4×8×8 maps differ in the mean of one channel each."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    f = torch.randn(n, 4, 8, 8, generator=gen)
    f[torch.arange(n), y] += 1.5
    return f, y


def test_net_learns_what_separates_the_variants():
    f, y = _toy_maps(600, 0)
    net, losses = vn.train_variant_net(f, y, 3, dict(epochs=8, batch_size=32, lr=3e-3), progress=False)
    assert losses[-1] < losses[0]
    held_f, held_y = _toy_maps(300, 1)
    assert (vn.variant_log_probs(net, held_f).argmax(1) == held_y).float().mean() > 0.95


def test_saved_net_loads_back_with_its_variant_order(tmp_path):
    f, y = _toy_maps(64, 2)
    net, _ = vn.train_variant_net(f, y, 3, dict(epochs=1, batch_size=16), progress=False)
    path = vn.save_variant_net(net, ["b", "a", "c"], tmp_path / "net.safetensors", {"note": "toy"})
    again = vn.save_variant_net(net, ["b", "a", "c"], tmp_path / "again.safetensors")
    assert again.read_bytes() == path.read_bytes(), "the same net, the same bytes (metadata in a fixed order)"
    loaded, names = vn.load_variant_net(path)
    assert names == ["b", "a", "c"]
    torch.testing.assert_close(vn.variant_log_probs(loaded, f), vn.variant_log_probs(net, f), rtol=0, atol=0)
    columns = vn.variant_nll(loaded, names, f[:5])
    assert list(columns) == ["b_fnet_nll", "a_fnet_nll", "c_fnet_nll"]
    total = sum(torch.exp(-torch.from_numpy(v)) for v in columns.values())
    torch.testing.assert_close(total, torch.ones(5, dtype=torch.float64))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors.*not a variant net"):
        vn.load_variant_net(tmp_path / "other.safetensors")


def _toy_maps_with_classes(n: int, seed: int):
    """Two "variants" × three classes: the variant shows as the sign of a shift of the class's channel."""
    gen = torch.Generator().manual_seed(seed)
    y, c = torch.arange(n) % 2, (torch.arange(n) // 2) % 3
    f = torch.randn(n, 4, 8, 8, generator=gen)
    f[torch.arange(n), c] += 2.0 * (2 * y - 1).float().view(-1, 1, 1)
    return f, y, c


def test_class_targets_are_summed_out(tmp_path):
    """Trained on (variant, class) pairs, the net still answers ``p(variant | f)``: the classes are
    summed out, the file keeps the class count, and a net without class targets writes none."""
    f, y, c = _toy_maps_with_classes(600, 4)
    net, losses = vn.train_variant_net(f, y, 2, dict(epochs=8, batch_size=32, lr=3e-3), progress=False, class_N=c, num_classes=3)
    assert net.shape["num_classes"] == 3 and net.body[-1].out_features == 6
    held_f, held_y, held_c = _toy_maps_with_classes(300, 5)
    log_p = vn.variant_log_probs(net, held_f)
    assert log_p.shape == (300, 2)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(300))
    assert (log_p.argmax(1) == held_y).float().mean() > 0.95
    path = vn.save_variant_net(net, ["u", "v"], tmp_path / "joint.safetensors")
    loaded, _ = vn.load_variant_net(path)
    torch.testing.assert_close(vn.variant_log_probs(loaded, held_f), log_p, rtol=0, atol=0)
    plain, _ = vn.train_variant_net(f, y, 2, dict(epochs=1, batch_size=32, class_targets=False), progress=False, class_N=c, num_classes=3)
    assert "num_classes" not in plain.shape and plain.body[-1].out_features == 2
    with pytest.raises(ValueError, match="class labels"):
        vn.train_variant_net(f, y, 2, dict(epochs=1), progress=False, class_N=c + 1, num_classes=3)


def test_an_ensemble_averages_its_members_posteriors(tmp_path):
    """``members`` nets from consecutive seeds: their mean probability, saved and loaded as one file;
    one member is a plain net."""
    f, y = _toy_maps(96, 6)
    ensemble, losses = vn.train_variant_nets(f, y, 3, dict(epochs=1, batch_size=16, members=2, seed=3), progress=False)
    assert isinstance(ensemble, vn.VariantNetEnsemble) and ensemble.shape["members"] == 2 and len(losses) == 2
    first, _ = vn.train_variant_net(f, y, 3, dict(epochs=1, batch_size=16, seed=3), progress=False)
    second, _ = vn.train_variant_net(f, y, 3, dict(epochs=1, batch_size=16, seed=4), progress=False)
    mean_p = (vn.variant_log_probs(first, f).exp() + vn.variant_log_probs(second, f).exp()) / 2
    torch.testing.assert_close(vn.variant_log_probs(ensemble, f).exp(), mean_p)
    path = vn.save_variant_net(ensemble, ["a", "b", "c"], tmp_path / "ensemble.safetensors")
    loaded, _ = vn.load_variant_net(path)
    torch.testing.assert_close(vn.variant_log_probs(loaded, f), vn.variant_log_probs(ensemble, f), rtol=0, atol=0)
    single, _ = vn.train_variant_nets(f, y, 3, dict(epochs=1, batch_size=16, members=1, seed=3), progress=False)
    assert isinstance(single, vn.VariantNet)
    torch.testing.assert_close(vn.variant_log_probs(single, f), vn.variant_log_probs(first, f), rtol=0, atol=0)


def test_a_distilled_net_follows_its_teacher():
    """``distill_weight``: the loss blends the labels with a teacher's posterior on its own maps. At
    weight 1 the labels are ignored, so a teacher that names variant 2 for every image makes a student
    that does too; at weight 0 the teacher changes nothing, bit for bit; and a weight outside
    [0, 1], a weight without a teacher, or a teacher with other maps, is refused."""
    f, y = _toy_maps(192, 7)
    teacher, _ = vn.train_variant_net(f, torch.full_like(y, 2), 3, dict(epochs=4, batch_size=32, lr=3e-3), progress=False)
    assert (vn.variant_log_probs(teacher, f).argmax(1) == 2).all()
    student, _ = vn.train_variant_net(f, y, 3, dict(epochs=4, batch_size=32, lr=3e-3, distill_weight=1.0), progress=False,
                                      teacher=(teacher, f))
    assert (vn.variant_log_probs(student, f).argmax(1) == 2).float().mean() > 0.9
    plain, plain_losses = vn.train_variant_net(f, y, 3, dict(epochs=2, batch_size=32), progress=False)
    ignored, ignored_losses = vn.train_variant_net(f, y, 3, dict(epochs=2, batch_size=32, distill_weight=0.0), progress=False,
                                                   teacher=(teacher, f))
    assert ignored_losses == plain_losses
    torch.testing.assert_close(vn.variant_log_probs(ignored, f), vn.variant_log_probs(plain, f), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs a teacher"):
        vn.train_variant_net(f, y, 3, dict(epochs=1, distill_weight=0.5), progress=False)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        vn.train_variant_net(f, y, 3, dict(epochs=1, distill_weight=1.5), progress=False, teacher=(teacher, f))
    with pytest.raises(ValueError, match="one per image"):
        vn.train_variant_net(f, y, 3, dict(epochs=1, distill_weight=0.5), progress=False, teacher=(teacher, f[:10]))


def test_an_images_output_does_not_depend_on_its_batch_mates():
    f, y = _toy_maps(13, 3)
    net, _ = vn.train_variant_net(f, y, 3, dict(epochs=1, batch_size=8), progress=False)
    together = vn.variant_log_probs(net, f)
    for i in (0, 8, 12):
        torch.testing.assert_close(vn.variant_log_probs(net, f[i:i + 1])[0], together[i], rtol=0, atol=0)


class _NetOnAnotherDevice(torch.nn.Module):
    """A stand-in for a net whose weights are on a GPU (here torch's ``meta`` device): it refuses maps
    on another device, as a CUDA convolution refuses CPU inputs, and answers on the CPU."""
    shape = {"num_variants": 3}

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device="meta"))

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        assert x_BChw.device == self.weight.device, f"maps on {x_BChw.device}, weights on {self.weight.device}"
        return torch.zeros(x_BChw.shape[0], 3)


def test_the_net_reads_its_maps_where_its_weights_are():
    """The feature pass on ``--device cuda`` makes the maps on the GPU, where the extractor puts the
    nets too; the net is fed on its own device and its answer comes back to the CPU, where
    :func:`variant_net.variant_nll` turns it into NumPy columns (``.numpy()`` of a CUDA tensor fails)."""
    f, _ = _toy_maps(10, 4)
    log_p = vn.variant_log_probs(_NetOnAnotherDevice(), f)
    assert log_p.device.type == "cpu" and log_p.shape == (10, 3)
    assert list(vn.variant_nll(_NetOnAnotherDevice(), ["a", "b", "c"], f)) == ["a_fnet_nll", "b_fnet_nll", "c_fnet_nll"]


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
def test_the_extractor_puts_the_nets_beside_the_models(tmp_path):
    """``FeatureExtractor(device=...)`` put the families' models on the device but left the variant
    nets on the CPU: on ``--device cuda`` the first batch stopped, a CUDA map fed to a CPU
    convolution. torch's ``meta`` device stands in for the GPU (nothing is computed)."""
    from feature_extractor import FeatureExtractor

    extractor = FeatureExtractor(device="meta", cache_dir=tmp_path / "features", inv_root=tmp_path / "inv",
                                 net_root=tmp_path / "nets", progress=False, fine_tune_missing=False)
    for family, (net, _) in extractor.nets.items():
        assert {t.device.type for t in net.state_dict().values()} == {"meta"}, family


def test_training_seeds_are_used_by_nothing_else():
    import sys
    from pathlib import Path

    import inv_decoder

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import diagnose_zoo

    seeds = [vn.generation_seed(s, v, b) for s in (0, 9) for v in (0, 9) for b in (0, 9_999)]
    assert min(seeds) == vn.SEED_OFFSET and max(seeds) < vn.SEED_OFFSET + 1_000_000
    assert vn.SEED_OFFSET >= inv_decoder.SEED_OFFSET + 1_000_000  # fine-tuning data: 7e6 … 8e6
    assert vn.SEED_OFFSET >= diagnose_zoo.DIAGNOSIS_SEED + 1_000_000
    with pytest.raises(ValueError):
        vn.generation_seed(0, 0, 10_000)


def test_a_missing_net_is_trained_once_or_named(tmp_path):
    """Weights without a shipped net: trained under the root on first use, then found there;
    with ``train_missing=False`` an error that names the path and the command."""
    from models.zoo import DEMO_ZOO_DIR

    zoo = tmp_path / "zoo"
    shutil.copytree(DEMO_ZOO_DIR, zoo, ignore=shutil.ignore_patterns(vn.SHIPPED_SUBDIR))
    import inv_decoder

    inverse = inv_decoder.inverse_adapter("VAR", zoo, tmp_path / "inv")
    with pytest.raises(FileNotFoundError, match="python variant_net.py --family VAR"):
        vn.ensure_variant_net("VAR", zoo, tmp_path / "nets", inverse, train_missing=False)
    path = vn.ensure_variant_net("VAR", zoo, tmp_path / "nets", inverse, TINY, progress=False)
    assert path == tmp_path / "nets" / "VAR" / vn.WEIGHTS_FILE
    stamp = path.stat().st_mtime_ns
    assert vn.ensure_variant_net("VAR", zoo, tmp_path / "nets", inverse, TINY, progress=False) == path
    assert path.stat().st_mtime_ns == stamp, "found, not trained again"
    assert vn.load_variant_net(path)[1] == list(inverse.variant_names)
    kept = sorted(p.name for p in vn.default_map_cache(tmp_path / "nets", "VAR").rglob("*.pt"))
    assert len(kept) == 8 and len([name for name in kept if name.endswith("_reencoded.pt")]) == 4, \
        "per batch its f and the re-encoded map the VAR net reads, kept"


def test_generated_maps_are_held_once_not_as_batches_and_their_concatenation(tmp_path, monkeypatch):
    """The maps go into one tensor batch by batch: a list of batches concatenated at the end held
    them twice at the peak (43 GB for the official RAR's default recipe), and gives the same maps."""
    import variant_net_maps

    inverse = _shipped_inverse("VAR")
    cached = vn.generate_training_maps(inverse, 3, 0, 2, progress=False, cache_dir=tmp_path)
    real_cat, joined = torch.cat, []

    def recorded_cat(tensors, *args, **kwargs):
        joined.append(tensors[0].dim())
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(variant_net_maps.torch, "cat", recorded_cat)
    again = vn.generate_training_maps(inverse, 3, 0, 2, progress=False, cache_dir=tmp_path)
    monkeypatch.undo()
    assert 4 not in joined, "no concatenation of the maps"
    assert again.x_NChw.shape == (3 * len(inverse.variant_names), *cached.x_NChw.shape[1:])
    for got, expected in zip(again, cached):
        assert torch.equal(got, expected)


def test_generated_maps_are_kept_and_read_back_bit_for_bit(tmp_path, monkeypatch):
    """A second call reads every batch from the cache (generating nothing) and gets the same tensors
    as generating them; other weights get another cache folder."""

    inverse = _shipped_inverse("VAR")
    fresh_f, fresh_y, fresh_c = vn.generate_training_maps(inverse, 3, 0, 2, progress=False)
    kept_f, kept_y, kept_c = vn.generate_training_maps(inverse, 3, 0, 2, progress=False, cache_dir=tmp_path)
    (folder,) = list(tmp_path.iterdir())
    assert len(list(folder.glob("*.pt"))) == 2 * len(inverse.variant_names)

    def no_generation(*args, **kwargs):
        raise AssertionError("generated although cached")

    monkeypatch.setattr(inverse, "generate", no_generation)
    read_f, read_y, read_c = vn.generate_training_maps(inverse, 3, 0, 2, progress=False, cache_dir=tmp_path)
    for got in (kept_f, read_f):
        torch.testing.assert_close(got, fresh_f, rtol=0, atol=0)
    assert torch.equal(read_y, fresh_y) and torch.equal(kept_y, fresh_y)
    # the class labels each batch was generated for, drawn again from its seed (batches of 2, then 1)
    drawn = [inverse.random_labels(n, vn.generation_seed(0, vi, j)) for vi in range(len(inverse.variant_names)) for j, n in enumerate((2, 1))]
    assert torch.equal(fresh_c, torch.cat(drawn)) and torch.equal(read_c, fresh_c) and torch.equal(kept_c, fresh_c)
    weight = next(inverse.tokenizer.parameters())
    before, saved = vn.adapter_fingerprint(inverse), weight.detach().clone()
    with torch.no_grad():
        weight.view(-1)[0] += 1
    try:
        assert vn.adapter_fingerprint(inverse) != before, "other weights, another cache folder"
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert vn.adapter_fingerprint(inverse) == before
    assert folder.name == vn.maps_folder_name(inverse) and folder.name.startswith(before[:16])


def test_a_reencoded_net_reads_f_after_one_correction_and_keeps_both_maps(tmp_path, monkeypatch):
    """``input_map="reencoded"``: the maps are ``f + f − D⁻¹(D(f))`` of the generations' ``f``, kept
    beside ``f`` and read back without decoding again; the net records its map in its file."""
    from signals import reencode_target

    inverse = _shipped_inverse("VAR")
    f, y, c = vn.generate_training_maps(inverse, 3, 0, 2, progress=False, cache_dir=tmp_path)
    x, x_y, x_c = vn.generate_training_maps(inverse, 3, 0, 2, progress=False, cache_dir=tmp_path, input_map="reencoded")
    assert torch.equal(x_y, y) and torch.equal(x_c, c)
    with torch.no_grad():
        torch.testing.assert_close(x, reencode_target(inverse, f, f), rtol=0, atol=1e-6)
    assert float((x - f).abs().max()) > 1e-2, "the correction moves the map"
    with torch.no_grad():
        round_trip = inverse.encode(inverse.decode(f))
    # a D⁻¹(D(f)) the caller already has (the feature pass: EncLoss's round trip) gives the same map
    torch.testing.assert_close(vn.net_input(inverse, f, "reencoded", round_trip), x, rtol=0, atol=1e-6)
    (folder,) = list(tmp_path.iterdir())
    assert len(list(folder.glob("*_reencoded.pt"))) == 2 * len(inverse.variant_names)

    def nothing_made(*args, **kwargs):
        raise AssertionError("made again although cached")

    monkeypatch.setattr(inverse, "generate", nothing_made)
    monkeypatch.setattr(inverse, "decode", nothing_made)
    again = vn.generate_training_maps(inverse, 3, 0, 2, progress=False, cache_dir=tmp_path, input_map="reencoded")
    torch.testing.assert_close(again.x_NChw, x, rtol=0, atol=0)
    assert vn.net_input(inverse, f, "f") is f
    with pytest.raises(ValueError, match="f, reencoded"):
        vn.net_input(inverse, f, "refined")

    net, _ = vn.train_variant_net(x, y, 4, dict(epochs=1, batch_size=4, input_map="reencoded"), progress=False)
    path = vn.save_variant_net(net, list(inverse.variant_names), tmp_path / "net.safetensors")
    loaded, _ = vn.load_variant_net(path)
    assert vn.input_map_of(loaded) == vn.input_map_of(net) == "reencoded"
    plain, _ = vn.train_variant_net(f, y, 4, dict(epochs=1, batch_size=4), progress=False)
    assert vn.input_map_of(plain) == "f" and "input_map" not in plain.shape, "nets that read f keep their files' bytes"
    with pytest.raises(ValueError, match="input_map"):
        vn.VariantNet(4, 8, 2, input_map="refined")


# what each shipped net must name of 192 fresh generations: well below its measured accuracy (docs/attribution.md,
# *Variant nets*), well above chance (25 %, sd 3.1 points), and above the net it replaced where the two
# are far enough apart to tell on 192 images (not RAR's: its net reading f named 0.81 of them)
SHIPPED_NET_BARS = {"VAR": 0.70, "RAR": 0.75}  # the shipped nets name 0.79 (VAR) and 0.82 (RAR) of these 192


def test_each_family_has_its_recipe():
    """:func:`variant_net.default_config`: the shared recipe with the family's overrides; a family
    without a net is an error naming the ones there are."""
    assert vn.default_config("VAR")["images_per_variant"] == vn.DEFAULT_CONFIG["images_per_variant"] == 81920
    assert vn.default_config("RAR")["images_per_variant"] == 20480
    assert vn.default_config("RAR")["members"] == vn.DEFAULT_CONFIG["members"]
    assert (vn.default_config("VAR")["input_map"], vn.default_config("RAR")["input_map"]) == ("reencoded", "reencoded")
    assert set(vn.NET_FAMILIES) == {"VAR", "RAR"}
    with pytest.raises(KeyError, match="VAR, RAR"):
        vn.default_config("outlier")


@pytest.mark.parametrize("family", vn.NET_FAMILIES)
def test_the_demo_zoos_net_names_fresh_generations(family):
    """192 fresh generations (a seed range of its own) mapped back by the shipped inverse decoder."""
    import inv_decoder
    from models.zoo import DEMO_ZOO_DIR

    inverse = _shipped_inverse(family)
    net, names = vn.load_variant_net(vn.shipped_file(DEMO_ZOO_DIR, family))
    assert names == list(inverse.variant_names)
    hits = []
    for vi, variant in enumerate(names):
        seed = 9_900_000 + vi  # above every training seed of the shipped nets (seed 0: < 9 100 000)
        img = inverse.generate(variant, inverse.random_labels(48, seed), seed)[0]
        with torch.no_grad():
            f = inverse.encode(inv_decoder.to_png_levels(img))
        hits.append(vn.variant_log_probs(net, vn.net_input(inverse, f, vn.input_map_of(net))).argmax(1) == vi)
    assert torch.cat(hits).float().mean() > SHIPPED_NET_BARS[family]


def test_cli_scores_a_net_on_generations_after_its_training_ones(tmp_path, capsys):
    """``--eval-generations N``: the generation batches right after the training ones (seeds never
    trained on), read as the net reads them (VAR's: re-encoded), kept in the map cache."""

    assert vn.main(["--family", "VAR", "--images-per-variant", "4", "--epochs", "1", "--members", "1", "--out", str(tmp_path / "nets"),
                    "--map-cache", str(tmp_path / "maps"), "--eval-generations", "2"]) == 0
    assert "accuracy on 8 fresh VAR generations it was not trained on:" in capsys.readouterr().out
    inverse = _shipped_inverse("VAR")
    kept = sorted(p.name for p in (tmp_path / "maps").rglob("*.pt"))
    # per variant: the training batch (index 0, 4 images) and the held-out one after it (index 1, 2 images)
    expected = sorted(f"{v}_{vn.generation_seed(0, vi, j)}_{n}{suffix}.pt" for vi, v in enumerate(inverse.variant_names)
                      for j, n in ((0, 4), (1, 2)) for suffix in ("", "_reencoded"))
    assert kept == expected
    x, y, _ = vn.heldout_maps(inverse, tmp_path / "nets" / "VAR" / vn.WEIGHTS_FILE, 2, tmp_path / "maps", progress=False)
    assert x.shape[0] == 8 and torch.equal(y, torch.arange(4).repeat_interleave(2))
    with pytest.raises(FileNotFoundError, match="no training record"):
        (tmp_path / "nets" / "VAR" / "variant_net.json").unlink()
        vn.heldout_maps(inverse, tmp_path / "nets" / "VAR" / vn.WEIGHTS_FILE, 2)


def test_cli_scores_the_net_in_use_without_training(tmp_path, capsys):
    """``--existing --eval``: the shipped net, scored on a labelled folder; nothing written under ``--out``."""
    import numpy as np
    from PIL import Image


    inverse = _shipped_inverse("VAR")
    for vi, variant in enumerate(inverse.variant_names):
        img = inverse.generate(variant, inverse.random_labels(1, 9_950_000 + vi), 9_950_000 + vi)[0]
        (tmp_path / "val" / variant).mkdir(parents=True)
        Image.fromarray((img[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy().astype(np.uint8)).save(tmp_path / "val" / variant / "a.png")
    assert vn.main(["--family", "VAR", "--existing", "--out", str(tmp_path / "nets"), "--eval", str(tmp_path / "val")]) == 0
    out = capsys.readouterr().out
    assert "demo_zoo/variant_nets/VAR/variant_net.safetensors" in out
    assert f"accuracy on the 4 VAR images of {tmp_path / 'val'}:" in out
    assert not (tmp_path / "nets").exists()


def test_diagnose_variant_net_command_measures_each_input_against_the_exact_fhat(tmp_path):
    """``scripts/diagnose_variant_net.py`` on a few VAR generations: one row per input, ``exact_fhat`` at
    0 error, the ``alpha`` input's error ``alpha²`` times the inverse decoder's, and the continuous
    re-encoding correction closer to ``f̂`` than ``f`` itself (as on 6 144 images: 1.96e-3 vs 2.40e-3)."""
    from pathlib import Path

    import pandas as pd

    assert _diagnose_variant_net().main(["--train-per-variant", "32", "--heldout-per-variant", "32", "--gen-batch", "16",
                                      "--alphas", "0.5", "--epochs", "1", "--corrector-epochs", "1", "--image-corrector-epochs", "1",
                                      "--end-to-end-epochs", "1", "--cache", "",
                                      "--out", str(tmp_path / "out")]) == 0
    assert list(tmp_path.iterdir()) == [tmp_path / "out"] and not list(Path.cwd().glob("[0-9a-f]" * 16 + "*")), "--cache '': no map kept"
    table = pd.read_csv(tmp_path / "out" / "variant_net_inputs.csv", index_col="input")
    assert list(table.index) == ["exact_fhat", "alpha_0.5", "inverse_f", "reencoded", "learned_corrector", "image_corrector",
                                 "exact_fhat_net_on_inverse_f", "inverse_f_net_trained_on", "end_to_end"]
    assert table.loc["inverse_f_net_trained_on", "fmse_to_fhat"] == table.loc["inverse_f", "fmse_to_fhat"]
    error = table["fmse_to_fhat"]
    assert error["exact_fhat"] == 0 and error["inverse_f"] > 1e-4
    assert error["alpha_0.5"] == pytest.approx(0.25 * error["inverse_f"], rel=1e-4)
    assert error["reencoded"] < 0.9 * error["inverse_f"]
    assert table["heldout_accuracy"].between(0, 1).all()


def test_diagnose_variant_net_trains_only_the_inputs_asked_for(tmp_path, monkeypatch):
    """``--inputs exact_fhat --alphas --members 2``: one row, an ensemble of two nets behind it, and
    no map re-encoded (the cost a ceiling-only run at 81 920 generations per variant must skip)."""
    import pandas as pd

    import variant_net

    diagnose = _diagnose_variant_net()

    def no_reencoding(*args, **kwargs):
        raise AssertionError("re-encoded maps although no input needs them")

    members = []
    real_train = variant_net.train_variant_nets

    def counting_train(*args, **kwargs):
        net, losses = real_train(*args, **kwargs)
        members.append(len(losses))
        return net, losses

    monkeypatch.setattr(diagnose, "reencoded", no_reencoding)
    monkeypatch.setattr(variant_net, "train_variant_nets", counting_train)
    assert diagnose.main(["--train-per-variant", "16", "--heldout-per-variant", "16", "--gen-batch", "16", "--alphas",
                          "--inputs", "exact_fhat", "--members", "2", "--epochs", "1", "--cache", "",
                          "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "variant_net_inputs.csv", index_col="input")
    assert list(table.index) == ["exact_fhat"] and table.loc["exact_fhat", "fmse_to_fhat"] == 0
    assert members == [2]


def test_diagnose_variant_net_recipes_add_mirrored_and_distilled_rows(tmp_path):
    """``--recipes mirrored distilled``: one row per recipe beside the base ones, and the base net
    scored on the mean posterior of each image and its mirror image; the mirror images' maps, ``D⁻¹``
    of the mirrored PNG image (not the mirrored map), are kept in the cache with the others; and a
    distilled recipe without its teacher's row is refused."""
    import pandas as pd

    diagnose = _diagnose_variant_net()
    args = ["--train-per-variant", "16", "--heldout-per-variant", "16", "--gen-batch", "16", "--alphas", "--inputs", "exact_fhat",
            "reencoded", "--recipes", "mirrored", "distilled", "--epochs", "1", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]
    assert diagnose.main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "variant_net_inputs.csv", index_col="input")
    assert list(table.index) == ["exact_fhat", "reencoded", "reencoded_mirrored", "reencoded_distilled", "reencoded_net_mirror_averaged"]
    assert table["heldout_accuracy"].between(0, 1).all()
    assert table.loc["reencoded_mirrored", "fmse_to_fhat"] == table.loc["reencoded", "fmse_to_fhat"]
    stored = [torch.load(path, weights_only=True) for path in (tmp_path / "cache").rglob("*.pt")]
    assert len(stored) == 8 and all({"f", "f_hat", "f_mirror"} <= set(batch) for batch in stored)
    from variant_net_maps import MAPS_VERSION

    folders = [p.name for p in (tmp_path / "cache").iterdir()]  # named as the training maps' are: other code, another folder
    assert len(folders) == 1 and folders[0].endswith(f"-v{MAPS_VERSION}-diagnose")
    assert not torch.equal(stored[0]["f_mirror"], stored[0]["f"].flip(-1)), "D⁻¹ of the mirror image, not the mirrored map"
    with pytest.raises(SystemExit):
        diagnose.main(args[:args.index("--inputs") + 1] + ["reencoded", "--recipes", "distilled"])
    with pytest.raises(SystemExit):
        diagnose.main(args[:args.index("--inputs") + 1] + ["reencoded", "--end-to-end-epochs", "1"])
    assert diagnose.recipe_changes("mirrored_distilled", 0.3, 4.0) == dict(mirror=True, distill_weight=0.3, distill_temperature=4.0)


def _diagnose_variant_net():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import diagnose_variant_net

    return diagnose_variant_net


def test_learned_corrector_finds_what_f_and_g_hold_of_fhat():
    """Where ``f̂`` is the mean of ``f`` and ``g`` (their errors opposite), the corrector learns it:
    its error falls far below ``g``'s."""
    diagnose = _diagnose_variant_net()
    gen = torch.Generator().manual_seed(0)
    f_hat = torch.randn(1024, 16, 8, 8, generator=gen)
    error = 0.5 * torch.randn(1024, 16, 8, 8, generator=gen)
    corrector = diagnose.fit_corrector(f_hat - error, f_hat + error, f_hat, epochs=4, batch_size=32)
    corrected = diagnose.corrected(corrector, f_hat - error, f_hat + error)
    assert (corrected - f_hat).pow(2).mean() < 0.2 * error.pow(2).mean()


def test_png_levels_decoded_from_fhat_are_the_generated_images():
    """The image corrector's images are decoded again from the cached ``f̂``: they must be the
    generated images' 8-bit levels, bit for bit."""
    import inv_decoder

    diagnose = _diagnose_variant_net()
    inverse = _shipped_inverse("VAR")
    img, _, f_hat = inverse.generate("var16", inverse.random_labels(8, 9_950_000), 9_950_000)
    levels = diagnose.png_levels(inverse, f_hat)
    assert levels.dtype == torch.uint8
    assert torch.equal(levels.float() / 255, inv_decoder.to_png_levels(img).cpu())


def test_cached_batches_get_images_and_mirror_maps_without_being_generated_again(tmp_path, monkeypatch):
    """A batch cached without mirror maps, asked for them and for its images, decodes its image from
    the cached ``f̂`` instead of generating it again: the same images and mirror maps, bit for bit, as
    a run with no cache, and the mirror maps join the cache."""

    diagnose = _diagnose_variant_net()
    inverse = _shipped_inverse("VAR")
    plain = diagnose.generate_maps(inverse, range(1), 8, 0, tmp_path, progress=False)
    fresh = diagnose.generate_maps(inverse, range(1), 8, 0, None, keep_images=8, progress=False, mirror=True)

    def no_generation(*args, **kwargs):
        raise AssertionError("generated a batch the cache holds")

    monkeypatch.setattr(inverse, "generate", no_generation)
    cached = diagnose.generate_maps(inverse, range(1), 8, 0, tmp_path, keep_images=8, progress=False, mirror=True)
    assert torch.equal(cached[0], plain[0]) and torch.equal(cached[0], fresh[0])
    assert torch.equal(cached[4], fresh[4]) and torch.equal(cached[5], fresh[5]) and len(cached[5]) == 32
    assert all("f_mirror" in torch.load(path, weights_only=True) for path in tmp_path.glob("*.pt"))


def test_an_image_corrector_reads_what_only_the_image_holds():
    """Where part of ``f̂`` shows in the image (its 4×4 block means) and not in ``f`` or ``g``, the
    corrector that reads the image takes most of ``g``'s error out on held-out images and the one
    without it cannot; images of a side that is not a power of two times the map's are refused."""
    import torch.nn.functional as F

    diagnose = _diagnose_variant_net()

    def toy(n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)
        g = 0.1 * torch.randn(n, 4, 4, 4, generator=gen)
        f_hat = g.clone()
        f_hat[:, :3] += 4 * (F.avg_pool2d(images.float() / 255, 4) - 0.5)
        return images, g, f_hat

    images, g, f_hat = toy(2048, 0)
    held_images, held_g, held_f_hat = toy(256, 1)
    error = float((held_g - held_f_hat).pow(2).mean())
    with_image = diagnose.fit_corrector(g, g, f_hat, epochs=6, batch_size=64, images_N3HW=images)
    without = diagnose.fit_corrector(g, g, f_hat, epochs=6, batch_size=64)
    assert float((diagnose.corrected(with_image, held_g, held_g, images_N3HW=held_images) - held_f_hat).pow(2).mean()) < 0.2 * error
    assert float((diagnose.corrected(without, held_g, held_g) - held_f_hat).pow(2).mean()) > 0.8 * error
    with pytest.raises(ValueError, match="power of two"):
        diagnose.fit_corrector(g, g, f_hat, epochs=1, images_N3HW=images[..., :12, :12])


def test_identifiability_splits_the_error_by_what_the_image_records():
    """A linear decoder with 8 strong and 8 near-null directions: an error along the near-null ones
    is all hidden (and kept whole), one along the strong ones is recorded and read down to the
    rounding noise."""
    from types import SimpleNamespace

    diagnose = _diagnose_variant_net()
    gen = torch.Generator().manual_seed(0)
    pixels_U = torch.linalg.qr(torch.randn(48, 16, generator=gen))[0]
    latent_V = torch.linalg.qr(torch.randn(16, 16, generator=gen))[0]
    gains = torch.tensor([1.0] * 8 + [1e-6] * 8)
    decoder = pixels_U @ torch.diag(gains) @ latent_V.T
    adapter = SimpleNamespace(decode=lambda z_B: (decoder @ z_B.reshape(len(z_B), -1).T).T)
    f_hat = torch.randn(3, 16, 1, 1, generator=gen)
    for directions, hidden in ((latent_V[:, 8:], True), (latent_V[:, :8], False)):
        error = (directions @ (0.01 * torch.randn(8, 3, generator=gen))).T.reshape(3, 16, 1, 1)
        row = diagnose.identifiability_row(adapter, f_hat + error, f_hat)
        assert row["images"] == 3 and row["fmse_to_fhat_before"] == pytest.approx(float(error.pow(2).mean()), rel=1e-4)
        if hidden:
            assert row["hidden_error_share"] == pytest.approx(1.0)
            assert row["fmse_to_fhat"] == pytest.approx(row["fmse_to_fhat_before"], rel=1e-3)
        else:
            assert row["hidden_error_share"] < 0.05
            assert row["fmse_to_fhat"] < 8 / 16 * diagnose.PNG_ROUNDING_VARIANCE * 1.01


def test_end_to_end_reader_learns_what_its_encoder_threw_away():
    """An encoder that starts blind to the red channel, where the variant is: trained through the net's
    loss, reader and net name held-out images' variants; the net alone on the blind maps (the
    control) stays near chance. The adapter's encoder is left as it was, and the tuned weights apply
    only inside ``encoder_weights``."""
    from types import SimpleNamespace

    import variant_net

    _diagnose_variant_net()  # puts scripts/ on the path
    import reader_finetune

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 2, stride=2)
    with torch.no_grad():
        conv.weight[:, 0] = 0  # blind to red
    conv.requires_grad_(False)
    adapter = SimpleNamespace(family="toy", tokenizer=torch.nn.ModuleDict(dict(encoder=conv)), encoder_modules=lambda: [conv],
                              encode=lambda x: conv(x))

    def toy(n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=gen)
        images = torch.randint(0, 128, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
        images[:, 0] += (127 * y).to(torch.uint8).view(-1, 1, 1)
        return images, y

    images, y = toy(512, 0)
    held_images, held_y = toy(256, 1)
    f = reader_finetune.read_maps(adapter, images)
    head, _ = variant_net.train_variant_net(f, y, 2, dict(epochs=1, batch_size=32, width=8, hidden=16), progress=False)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    alone, none = reader_finetune.finetune_reader(adapter, head, images, y, None, 1, epochs=4, train_encoder=False, f_NChw=f,
                                                  head_lr=1e-2, batch_size=32, progress=False)
    tuned_net, tuned = reader_finetune.finetune_reader(adapter, head, images, y, None, 1, epochs=4, encoder_lr=1e-2, head_lr=1e-2,
                                                       batch_size=32, progress=False)
    assert none is None and all(torch.equal(v, conv.state_dict()[k]) for k, v in before.items()) and not conv.weight.requires_grad
    assert variant_net.variant_accuracy(alone, reader_finetune.read_maps(adapter, held_images), held_y) < 0.65
    with reader_finetune.encoder_weights(adapter, tuned):
        assert float(conv.weight[:, 0].abs().sum()) > 0
        assert variant_net.variant_accuracy(tuned_net, reader_finetune.read_maps(adapter, held_images), held_y) > 0.9
    assert float(conv.weight[:, 0].abs().sum()) == 0
    with pytest.raises(ValueError, match="frozen encoder"):
        reader_finetune.finetune_reader(adapter, head, images, y, None, 1, epochs=1, train_encoder=False)


def _shipped_inverse(family: str):
    """``family``'s adapter with the demo zoo's shipped inverse decoder. A missing one fails the test
    (``fine_tune_missing=False``) instead of being fine-tuned into the working directory."""
    import inv_decoder
    from models.zoo import load_family

    path = inv_decoder.ensure_inverse_decoder(family, None, "/nonexistent", fine_tune_missing=False)
    return inv_decoder.load_inverse_decoder(load_family(family), path)
