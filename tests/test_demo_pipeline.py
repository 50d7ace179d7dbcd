"""End to end on the shipped demo zoo: the demo Dataset generator and ``submission.py``.

A tiny demo Dataset (3 train / 2 val / 2 test images per class) is generated from the shipped
zoo; the tests check its layout and hidden labels, that it is reproducible byte for byte, and
that ``submission.py`` turns it into a valid ``submission.csv`` — the same bytes again on a warm
rerun that computes no feature twice.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_demo_dataset  # noqa: E402
import submission  # noqa: E402
from attribution import pick_method  # noqa: E402
from cli import InputError  # noqa: E402
from models.registry import CLASS_NAMES  # noqa: E402
from models.zoo import DEMO_ZOO_DIR  # noqa: E402

COUNTS = {"train": 3, "val": 2, "test": 2}


def _digest_tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    assert (DEMO_ZOO_DIR / "zoo.json").is_file(), "the demo zoo is missing: run python scripts/build_demo_zoo.py"
    out = tmp_path_factory.mktemp("demo") / "Dataset"
    make_demo_dataset.build(out, seed=0, counts=COUNTS, progress=False)
    return out


def test_layout_and_hidden_labels(tiny_dataset):
    for split in ("train", "val"):
        meta = pd.read_csv(tiny_dataset / f"{split}_meta.csv")
        assert sorted(p.name for p in (tiny_dataset / split).iterdir()) == sorted(CLASS_NAMES)
        for cls in CLASS_NAMES:
            assert len(list((tiny_dataset / split / cls).glob("*.png"))) == COUNTS[split]
        assert set(meta["label"]) == set(CLASS_NAMES) and len(meta) == 9 * COUNTS[split]
    test_files = sorted(p.name for p in (tiny_dataset / "test").iterdir())
    labels = pd.read_csv(tiny_dataset / "test_labels.csv")
    assert sorted(labels["image_name"]) == test_files and len(test_files) == 9 * COUNTS["test"]
    assert all(not any(c in name for c in CLASS_NAMES + ("natural", "iar")) for name in test_files)
    sources = pd.concat([pd.read_csv(tiny_dataset / f"{split}_meta.csv") for split in ("train", "val")] + [labels])
    # every split's outliers come from the three documented sources, and all three are used
    assert set(sources[sources["label"] == "outlier"]["source"]) == {"natural_reserved", "natural_heldout", "outlier_iar"}
    pixel_hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_dataset.rglob("*.png")]
    assert len(set(pixel_hashes)) == len(pixel_hashes), "an image appears twice across splits"


def test_dataset_is_reproducible_with_any_number_of_workers(tiny_dataset, tmp_path):
    """Also written through a link to a folder (a linked ``Dataset``), which used to fail after the
    work: the old folder could not be removed as a folder, nor the new one renamed onto the link."""
    again = tmp_path / "Dataset"
    again.mkdir()
    (again / "old.txt").write_text("replaced")
    link = tmp_path / "linked"
    link.symlink_to(again, target_is_directory=True)
    make_demo_dataset.build(link, seed=0, counts=COUNTS, progress=False, workers=2)
    assert link.is_symlink() and _digest_tree(again) == _digest_tree(tiny_dataset)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset", "linked"]


def test_a_zoo_that_cannot_load_ends_the_command_with_one_line(tmp_path):
    """With several workers, a zoo the workers could not load made the pool start new workers
    forever (the load was in its initializer): the command never ended."""
    (tmp_path / "zoo").mkdir()
    command = [sys.executable, str(ROOT / "scripts" / "make_demo_dataset.py"), "--out", str(tmp_path / "ds"),
               "--train", "1", "--val", "1", "--test", "1", "--workers", "2", "--no-progress"]
    done = subprocess.run(command + ["--zoo", str(tmp_path / "zoo")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: weight file not found" in done.stderr, done.stderr
    assert not (tmp_path / "ds").exists()
    done = subprocess.run(command + ["--zoo", str(tmp_path / "absent")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--zoo: " in done.stderr and "no such folder" in done.stderr, done.stderr


def test_submission_end_to_end_and_warm_rerun(tiny_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    args = ["--test", str(tiny_dataset / "test"), "--labels", str(tiny_dataset / "test_labels.csv"),
            "--cache-dir", str(cache), "--batch-size", "64"]
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert submission.main(args + ["--out", str(first)]) == 0
    shards = sorted((cache / "features").rglob("*.parquet"))
    assert shards, "no feature shards were cached"
    table = pd.read_csv(first)
    assert list(table.columns) == ["image_name", "label"]
    assert sorted(table["image_name"]) == sorted(p.name for p in (tiny_dataset / "test").iterdir())
    assert set(table["label"]) <= set(CLASS_NAMES)
    probabilities = (tmp_path / "a_report" / "test_probabilities.csv").read_bytes()
    assert submission.main(args + ["--out", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    # per test image, its label (as in submission.csv) and the 9 probabilities it was read from
    assert (tmp_path / "b_report" / "test_probabilities.csv").read_bytes() == probabilities
    read = pd.read_csv(tmp_path / "a_report" / "test_probabilities.csv")
    assert list(read.columns) == ["image_name", "label", *CLASS_NAMES]
    assert read[["image_name", "label"]].equals(table)
    assert np.allclose(read[list(CLASS_NAMES)].sum(axis=1), 1.0, atol=1e-5)
    confidence = pd.read_csv(tmp_path / "a_report" / "test_confidence.csv", index_col="confidence")
    assert (tmp_path / "a_report" / "test_confidence.png").stat().st_size > 0
    assert confidence["n"].sum() == len(pd.read_csv(tiny_dataset / "test_labels.csv")), "every labelled test image in a bin"
    assert json.loads((tmp_path / "a_report" / "summary.json").read_text())["test_confidence"]["bins"][0]["n"] == confidence["n"].iloc[0]
    assert sorted((cache / "features").rglob("*.parquet")) == shards, "the warm rerun recomputed features"
    assert (tmp_path / "a_report" / "test_confusion.png").stat().st_size > 0
    # the default --method auto fitted both methods and kept the one of higher validation accuracy
    report = json.loads((tmp_path / "a_report" / "summary.json").read_text())
    assert report["requested_method"] == "auto" and set(report["validation_accuracy_by_method"]) == {"two-stage", "flat"}
    assert report["method"] == pick_method(report["validation_accuracy_by_method"])
    assert report["validation"]["accuracy"] == pytest.approx(report["validation_accuracy_by_method"][report["method"]])
    assert len(list((cache / "models").iterdir())) == 2
    # the report names each family's variant-net weight in the kept method's posterior, chosen on train
    from net_blend import WEIGHTS

    assert set(report["net_blend_weights"]) <= {"VAR", "RAR"} and set(report["net_blend_weights"].values()) <= set(WEIGHTS)
    # the report says for how many images the scoring gate had each family's variant features computed
    # (on this tiny Dataset it skips none; its skipping is tested with fixed answers below and in test_attribution)
    computed = report["variant_features_computed"]
    assert set(computed) == {"VAR", "RAR"} and all(0 < n <= 9 * sum(COUNTS.values()) for n in computed.values())
    features = pd.concat([pd.read_parquet(tmp_path / "a_report" / f"features_{s}.parquet") for s in ("train", "val", "test")])
    assert computed == {"VAR": int(features["var16_nll_marginal"].notna().sum()), "RAR": int(features["rarb_nll_marginal"].notna().sum())}
    assert not features.filter(regex="^(VAR|RAR)_").isna().any().any(), "family signals are never left out"
    assert not any(c.startswith("scored_") for c in features.columns), "store markers leaked into the features"
    # a run killed while it rewrites the report leaves no summary.json: the folder is not whole
    import scoring

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt("killed while writing the report")

    monkeypatch.setattr(scoring, "write_report", killed)
    with pytest.raises(KeyboardInterrupt):
        submission.main(args + ["--out", str(first)])
    assert not (tmp_path / "a_report" / "summary.json").exists() and not list((tmp_path / "a_report").glob("*.tmp"))


def test_prada_method_end_to_end(tiny_dataset, tmp_path):
    """``--method prada`` reads the per-token store the feature pass filled, writes a valid
    submission and leaves its per-token frames in the report for ``flat_prada.py``."""
    out = tmp_path / "prada.csv"
    args = ["--test", str(tiny_dataset / "test"), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "64", "--out", str(out)]
    assert submission.main(args + ["--method", "prada"]) == 0
    table = pd.read_csv(out)
    assert sorted(table["image_name"]) == sorted(p.name for p in (tiny_dataset / "test").iterdir())
    assert set(table["label"]) <= set(CLASS_NAMES)
    report = json.loads((tmp_path / "prada_report" / "summary.json").read_text())
    assert report["method"] == "prada" and list(report["validation_accuracy_by_method"]) == ["prada"]
    assert report["net_blend_weights"] == {}
    tokens = pd.read_parquet(tmp_path / "prada_report" / "tokens_test.parquet")
    assert sorted(tokens.index) == sorted(table["image_name"]) and len(tokens.columns) == 16
    assert len(tokens["var16_cond"].iloc[0]) == 155 and len(tokens["rarb_uncond"].iloc[0]) == 64
    with pytest.raises(SystemExit):
        submission.main(args + ["--method", "prada", "--no-cache"])


def test_zoo_digest_names_the_generating_weights_only(tmp_path):
    """Retraining an inverse decoder or a variant net leaves a Dataset current; any tokenizer or
    generator change outdates it."""
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("aa  var16.safetensors\nbb  inv_decoders/VAR/inv_decoder.safetensors\nee  variant_nets/RAR/variant_net.safetensors\n")
    first = make_demo_dataset.zoo_digest(tmp_path)
    sums.write_text("aa  var16.safetensors\ncc  inv_decoders/VAR/inv_decoder.safetensors\nff  variant_nets/RAR/variant_net.safetensors\n")
    assert make_demo_dataset.zoo_digest(tmp_path) == first
    sums.write_text("ab  var16.safetensors\ncc  inv_decoders/VAR/inv_decoder.safetensors\nff  variant_nets/RAR/variant_net.safetensors\n")
    assert make_demo_dataset.zoo_digest(tmp_path) != first


def test_demo_dataset_is_rebuilt_when_the_zoo_changes(tiny_dataset, tmp_path):
    """``--demo`` reuses a Dataset only if the shipped zoo made it; it never replaces a folder that is not a demo Dataset."""
    assert make_demo_dataset.demo_dataset_outdated(tiny_dataset) is None
    assert make_demo_dataset.demo_dataset_outdated(tmp_path / "absent") == "missing"
    stale = tmp_path / "stale"
    (stale / "test").mkdir(parents=True)
    (stale / "dataset.json").write_text('{"zoo_sha256sums_digest": "0000"}')
    assert "other zoo weights" in make_demo_dataset.demo_dataset_outdated(stale)
    current = json.loads((tiny_dataset / "dataset.json").read_text())
    assert current["recipe"] == make_demo_dataset.DATASET_RECIPE and current["made_from_demo_zoo"] is True
    # a Dataset made from another zoo, and a file, are refused (a file was a NotADirectoryError traceback)
    (stale / "dataset.json").write_text(json.dumps(dict(current, made_from_demo_zoo=False, zoo="/my/zoo")))
    with pytest.raises(InputError, match="is a Dataset of another zoo \\(/my/zoo\\), not the demo's, and is not replaced"):
        make_demo_dataset.demo_dataset_outdated(stale)
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match="is a file, not a Dataset folder"):
        make_demo_dataset.demo_dataset_outdated(tmp_path / "afile")
    (stale / "dataset.json").write_text(json.dumps({k: v for k, v in current.items() if k != "recipe"}))
    assert "earlier recipe (1, now" in make_demo_dataset.demo_dataset_outdated(stale)
    foreign = tmp_path / "foreign"
    (foreign / "test").mkdir(parents=True)
    with pytest.raises(InputError, match="not a demo Dataset"):
        make_demo_dataset.demo_dataset_outdated(foreign)
    # a dataset.json of something else, or one that does not parse, protects the folder as well
    (foreign / "dataset.json").write_text('{"name": "my real data"}')
    with pytest.raises(InputError, match="not a demo Dataset .*names no demo zoo"):
        make_demo_dataset.demo_dataset_outdated(foreign)
    (foreign / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be read .* is not replaced"):
        make_demo_dataset.demo_dataset_outdated(foreign)
    assert (foreign / "test").is_dir()


def test_each_split_crops_its_own_rows_of_every_photo():
    """The natural outliers of train, val and test share no pixel: each split's strip of rows."""
    import demo_photos

    for photo in demo_photos.RESERVED_PHOTOS + demo_photos.MODEL_PHOTOS:
        part = "all" if photo in demo_photos.RESERVED_PHOTOS else "val"
        whole = demo_photos._region(demo_photos.load_photo(photo), part)
        strips = [demo_photos._region(demo_photos.load_photo(photo), part, (i, 3)) for i in range(3)]
        assert sum(len(s) for s in strips) == len(whole) and min(min(s.shape[:2]) for s in strips) >= 64, photo
        assert all((s == whole[start:start + len(s)]).all() for s, start in
                   zip(strips, (0, len(strips[0]), len(strips[0]) + len(strips[1]))))
    crops, labels = demo_photos.random_crops(demo_photos.RESERVED_PHOTOS, 0, 1, "all", strip=(2, 3))
    assert crops.shape == (0, 64, 64, 3) and len(labels) == 0


def test_missing_training_split_is_named_before_any_model_loads(tmp_path, monkeypatch):
    """``--test`` without train/ beside it stops with the folder and the fix, not a traceback."""
    import feature_extractor
    from PIL import Image

    test_dir = tmp_path / "mine" / "test"
    test_dir.mkdir(parents=True)
    Image.new("RGB", (64, 64), (120, 30, 200)).save(test_dir / "x.png")

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before the splits were checked")

    monkeypatch.setattr(feature_extractor, "FeatureExtractor", no_models)
    with pytest.raises(InputError, match=r"mine/train: no train folder; give --train DIR"):
        submission.main(["--test", str(test_dir), "--out", str(tmp_path / "s.csv")])
    (tmp_path / "mine" / "train" / "var16").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "mine" / "train" / "var16" / "y.png")
    with pytest.raises(InputError, match=r"mine/val: no val folder; give --val DIR"):
        submission.main(["--test", str(test_dir), "--out", str(tmp_path / "s.csv")])
    assert not (tmp_path / "s.csv").exists()


def test_worker_processes_match_one_process_and_fill_the_store(tiny_dataset, tmp_path):
    """``workers=2`` (the default on a 2-core machine) gives the one-process rows, in order, and caches each batch."""
    from feature_extractor import FeatureExtractor
    from feature_store import file_sha256

    paths = sorted((tiny_dataset / "test").glob("*.png"))[:6]
    ids = [p.name for p in paths]
    kwargs = dict(inv_root=tmp_path / "inv", batch_size=2, progress=False)
    one = FeatureExtractor(cache_dir=tmp_path / "one", workers=1, **kwargs).features(paths, ids)
    pooled = FeatureExtractor(cache_dir=tmp_path / "two", workers=2, **kwargs)
    two = pooled.features(paths, ids)
    assert list(two.index) == ids and list(two.columns) == list(one.columns)
    assert not two.isna().any().any()
    # one thread per worker vs two in one process: the same numbers up to float reassociation
    pd.testing.assert_frame_equal(two, one, rtol=1e-3, atol=1e-6)
    assert len(pooled.store.shards()) == len(pooled.token_store.shards()) == 3, "each batch is its own shard, in both stores"
    assert pooled.store.missing([file_sha256(p) for p in paths]) == [], "a worker's rows did not reach the shared store"


def test_batch_timings_name_every_part_and_change_no_feature(tiny_dataset, tmp_path):
    """``features_for_batch(timings=…)`` (``bench_features.py --breakdown``) times each family's
    signals and each variant, and computes the same rows as without it."""
    from batch_features import features_for_batch
    from dataset import load_images
    from feature_extractor import FeatureExtractor
    from models.registry import VARIANT_NAMES

    extractor = FeatureExtractor(inv_root=tmp_path / "inv", use_cache=False, progress=False)
    images = load_images(sorted((tiny_dataset / "test").glob("*.png"))[:2], size=extractor.image_size)
    timings: dict = {}
    timed, timed_tokens = features_for_batch(extractor.adapters, images, timings=timings)
    plain, plain_tokens = features_for_batch(extractor.adapters, images)
    pd.testing.assert_frame_equal(timed, plain)
    pd.testing.assert_frame_equal(timed_tokens, plain_tokens)
    assert set(timings) == {"VAR_signals", "RAR_signals", *VARIANT_NAMES}
    assert all(seconds > 0 for seconds in timings.values())


def test_missing_token_rows_are_computed_again_only_when_asked_for(tiny_dataset, tmp_path):
    """A run killed between a batch's feature shard and its token shard: the features stay served
    from the cache, and the per-token rows are computed again when PRADA asks for them."""
    from feature_extractor import FeatureExtractor
    from feature_store import file_sha256

    paths = sorted((tiny_dataset / "test").glob("*.png"))[:3]
    extractor = FeatureExtractor(inv_root=tmp_path / "inv", cache_dir=tmp_path / "cache", batch_size=4, progress=False)
    first = extractor.features(paths)
    for shard in extractor.token_store.shards():
        shard.unlink()
    feature_shards = extractor.store.shards()
    pd.testing.assert_frame_equal(extractor.features(paths), first)
    assert extractor.store.shards() == feature_shards, "features were computed again though cached"
    tokens = extractor.token_log_likelihoods(paths)
    assert not tokens.isna().any().any() and len(tokens) == 3
    assert extractor.token_store.missing([file_sha256(p) for p in paths]) == []
    assert len(extractor.token_store.shards()) == 1


def test_rows_carry_each_variant_nets_posterior(tiny_dataset, tmp_path):
    """``{variant}_fnet_nll`` (:mod:`variant_net`): one column per variant of each family with a net,
    a distribution over its variants per image, and what the shipped net says about ``D⁻¹(x)``
    itself (for RAR, not the re-encoding target its tokens are read from)."""
    import numpy as np
    import torch

    import variant_net
    from chunks import CHUNK
    from dataset import load_images
    from feature_extractor import FeatureExtractor

    paths = sorted((tiny_dataset / "test").glob("*.png"))[:3]
    extractor = FeatureExtractor(inv_root=tmp_path / "inv", use_cache=False, progress=False)
    rows = extractor.features(paths)
    assert sorted(extractor.nets) == sorted(variant_net.NET_FAMILIES)
    all_columns = [c for c in rows.columns if c.endswith("_fnet_nll")]
    for family, (net, names) in extractor.nets.items():
        columns = [f"{v}_fnet_nll" for v in names]
        assert names == list(extractor.adapters[family].variant_names) and set(columns) <= set(all_columns)
        np.testing.assert_allclose(np.exp(-rows[columns].to_numpy()).sum(axis=1), 1.0, rtol=1e-6)
        images = load_images(paths, size=extractor.image_size)
        padded = torch.cat([images, images[:1].expand(CHUNK - len(paths), *images.shape[1:])])  # as the extractor's passes run
        with torch.no_grad():
            f = extractor.adapters[family].encode(padded)
        expected = variant_net.variant_log_probs(net, variant_net.net_input(extractor.adapters[family], f,
                                                                          variant_net.input_map_of(net))).double().numpy()
        np.testing.assert_allclose(-rows[columns].to_numpy(), expected[:len(paths)], rtol=1e-6, atol=1e-7)
    assert len(all_columns) == sum(len(names) for _, names in extractor.nets.values())


class _FixedGate:
    """A stand-in :class:`provenance.ScoringGate` with fixed answers per image of the batch."""

    def __init__(self, var, rar):
        self.answers = {"VAR": list(var), "RAR": list(rar)}

    def needs(self, signals):
        n = len(signals)
        return pd.DataFrame({f: (a * n)[:n] for f, a in self.answers.items()}, index=signals.index).astype(bool)


def test_a_gated_batch_scores_only_the_needed_families(tiny_dataset, tmp_path):
    """Per image, the variant features of the families the gate (or ``forced``) names, NaN for the
    others, empty per-token arrays and a 0 marker; what is computed matches the ungated batch."""
    import numpy as np

    from batch_features import features_for_batch
    from dataset import load_images
    from feature_extractor import FeatureExtractor

    extractor = FeatureExtractor(inv_root=tmp_path / "inv", use_cache=False, progress=False)
    images = load_images(sorted((tiny_dataset / "test").glob("*.png"))[:3], size=extractor.image_size)
    full, full_tokens = features_for_batch(extractor.adapters, images)
    gate = _FixedGate(var=[True, False, False], rar=[False, True, False])
    forced = {"RAR": np.array([False, False, True])}
    gated, gated_tokens = features_for_batch(extractor.adapters, images, variant_gate=gate, forced=forced)
    assert list(gated.columns) == list(full.columns) and list(gated_tokens.columns) == list(full_tokens.columns)
    assert list(gated["scored_VAR"]) == [1.0, 0.0, 0.0] and list(gated["scored_RAR"]) == [0.0, 1.0, 1.0]
    assert list(full["scored_VAR"]) == list(full["scored_RAR"]) == [1.0, 1.0, 1.0]
    for family, prefixes, rows in (("VAR", ("var",), [0]), ("RAR", ("rar",), [1, 2])):
        columns = [c for c in full.columns if c.startswith(prefixes)]
        skipped = [i for i in range(3) if i not in rows]
        assert gated.loc[skipped, columns].isna().all().all()
        pd.testing.assert_frame_equal(gated.loc[rows, columns], full.loc[rows, columns].astype(float), rtol=1e-3, atol=1e-6)
        assert all(len(gated_tokens.at[i, f"{prefixes[0]}{'16' if family == 'VAR' else 'b'}_cond"]) == 0 for i in skipped)
    signals = [c for c in full.columns if c.startswith(("VAR_", "RAR_"))]
    pd.testing.assert_frame_equal(gated[signals], full[signals])


def test_an_images_features_do_not_depend_on_its_batch_mates(tiny_dataset, tmp_path):
    """Every pass runs in fixed-size chunks (``chunks.CHUNK``), so an image gets exactly the
    same row whatever the gate asks of the others, in whichever order and in batches of whatever
    size: rows are keyed by image content in the store, and a Slurm array batches images
    differently from a local run (and a run's last batch is smaller)."""
    import numpy as np
    import torch

    from batch_features import features_for_batch
    from dataset import load_images
    from feature_extractor import FeatureExtractor
    from models.registry import VARIANT_NAMES

    extractor = FeatureExtractor(inv_root=tmp_path / "inv", use_cache=False, progress=False)
    images = load_images(sorted((tiny_dataset / "test").glob("*.png"))[:12], size=extractor.image_size)
    var_needed = [False, True, False, False, False, False, False, False, False, True, False, False]  # 2 images: a small pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the feature workers: with more, reductions split work by tensor size
    try:
        gated = features_for_batch(extractor.adapters, images, variant_gate=_FixedGate(var=var_needed, rar=[True]))[0]
        order = list(np.random.default_rng(0).permutation(12))
        everything = features_for_batch(extractor.adapters, images[order])[0].set_axis(order).sort_index()
        in_small_batches = pd.concat([features_for_batch(extractor.adapters, images[a:b])[0] for a, b in ((0, 3), (3, 4), (4, 12))],
                                     ignore_index=True)
    finally:
        torch.set_num_threads(threads)
    variants = [c for c in gated.columns if c.split("_", 1)[0] in VARIANT_NAMES]
    for i in range(12):
        scored = [c for c in variants if var_needed[i] or not c.startswith("var")]
        pd.testing.assert_series_equal(gated.loc[i, scored].astype(float), everything.loc[i, scored].astype(float),
                                       check_names=False, rtol=0, atol=0)
    pd.testing.assert_frame_equal(in_small_batches, everything, rtol=0, atol=0)


def test_a_cached_row_lacking_a_needed_family_is_completed(tiny_dataset, tmp_path):
    """Rows cached without a family's variant features are computed again when a later call needs
    them (no gate, or PRADA's per-token rows); calls that need no more are served from the cache."""
    from feature_extractor import FeatureExtractor
    from feature_store import file_sha256

    paths = sorted((tiny_dataset / "test").glob("*.png"))[:3]
    extractor = FeatureExtractor(inv_root=tmp_path / "inv", cache_dir=tmp_path / "cache", batch_size=4, progress=False)
    nothing = _FixedGate(var=[False], rar=[False])
    sparse = extractor.features(paths, variant_gate=nothing)
    assert sparse.filter(regex="^(var|rar)").isna().all().all() and not sparse.filter(regex="^(VAR|RAR)_").isna().any().any()
    shards = extractor.store.shards()
    pd.testing.assert_frame_equal(extractor.features(paths, variant_gate=nothing), sparse)
    assert extractor.store.shards() == shards, "a gated rerun recomputed rows it had"
    full = extractor.features(paths)
    assert not full.isna().any().any() and len(extractor.store.shards()) == len(shards) + 1
    pd.testing.assert_frame_equal(full.filter(regex="^(VAR|RAR)_"), sparse.filter(regex="^(VAR|RAR)_"), rtol=1e-6)
    # the store now serves the complete rows, and a gated call still gets only what its gate needs
    assert extractor.store.read([file_sha256(p) for p in paths])[["scored_VAR", "scored_RAR"]].eq(1.0).all(axis=None)
    pd.testing.assert_frame_equal(extractor.features(paths, variant_gate=nothing), sparse, rtol=1e-6)
    tokens = extractor.token_log_likelihoods(paths)
    assert len(tokens.columns) == 16 and all(len(tokens.at[str(p), "var16_cond"]) == 155 for p in paths)
    assert len(extractor.store.shards()) == len(shards) + 1, "the token rows were complete already"


def test_byte_identical_images_share_one_row_also_when_completed(tiny_dataset, tmp_path):
    """Two files with the same bytes have one store key: a cached row of it lacking a family is
    completed once, and both files get the same features."""
    import shutil

    from feature_extractor import FeatureExtractor

    first = sorted((tiny_dataset / "test").glob("*.png"))[0]
    twin = tmp_path / "twin.png"
    shutil.copy(first, twin)
    extractor = FeatureExtractor(inv_root=tmp_path / "inv", cache_dir=tmp_path / "cache", batch_size=4, progress=False)
    extractor.features([first, twin], variant_gate=_FixedGate(var=[False], rar=[False]))
    full = extractor.features([first, twin])
    assert len(full) == 2 and not full.isna().any().any()
    pd.testing.assert_series_equal(full.iloc[0], full.iloc[1], check_names=False)
    key = extractor.store.read().index[0]
    rows, missing = extractor.store.lookup([key, key])
    assert len(rows) == 1 and missing == []


def test_a_seed_out_of_range_is_one_error_line_before_any_work(tmp_path):
    """``--seed 70`` would generate with the inverse decoders' fine-tuning seeds and ``--seed -1`` ends in
    numpy's traceback after the models load: both are one ``error:`` line with status 2."""
    import subprocess

    for seed in ("70", "-1"):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_dataset.py"), "--seed", seed, "--small",
                               "--workers", "1", "--no-progress", "--out", str(tmp_path / "Dataset")],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr == f"error: --seed {seed}: must be in 0 … 69 (generation seeds from 7000000 on are the " \
                              "inverse decoders' fine-tuning data)\n"
        assert not (tmp_path / "Dataset").exists()


def test_default_workers():
    assert submission.default_workers(None, "cpu") >= 1
    assert submission.default_workers(None, "cuda") == 1
    assert submission.default_workers(ROOT / "tests" / "reference", "cpu") == 1  # not a zoo: official-style weights


def test_write_submission_sorted_into_a_new_folder(tmp_path):
    out = tmp_path / "not" / "yet" / "submission.csv"  # --out in a folder that does not exist yet
    submission.write_submission(pd.Series(["var16", "outlier"], index=["b.png", "a.png"]), out)
    assert out.read_text() == "image_name,label\na.png,outlier\nb.png,var16\n"
    assert not list(out.parent.glob("*.tmp"))


def test_a_submission_failing_its_check_leaves_the_previous_file(tmp_path):
    out = tmp_path / "submission.csv"
    submission.write_submission(pd.Series(["var16"], index=["a.png"]), out, ["a.png"])
    before = out.read_bytes()
    with pytest.raises(RuntimeError, match="1 test images without a row"):
        submission.write_submission(pd.Series(["rarb"], index=["a.png"]), out, ["a.png", "b.png"])
    assert out.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(RuntimeError, match=f"{out}: duplicated image names"):
        submission.write_submission(pd.Series(["rarb", "var16"], index=["a.png", "a.png"]), out, ["a.png"])
    assert out.read_bytes() == before
    # a name with a line break (legal on POSIX) is quoted, so the file reads back one row per image
    names = ["a.png", "b\rc.png", "d\ne.png", 'q"uote,comma.png']
    submission.write_submission(pd.Series(["var16", "rarb", "outlier", "var30"], index=names), out, names)
    assert sorted(pd.read_csv(out)["image_name"]) == sorted(names)


def test_a_submission_with_a_row_for_an_unknown_image_is_refused(tmp_path):
    """One row per test image and no other: a row for an image that is not a test image fails the check."""
    out = tmp_path / "submission.csv"
    out.write_text("image_name,label\na.png,var16\nz.png,rarb\n")
    with pytest.raises(RuntimeError, match=r"submission.csv: 0 test images without a row, 1 rows for unknown images"):
        submission.validate_submission(out, ["a.png"])
    submission.validate_submission(out, ["a.png", "z.png"])


def test_bad_inputs_are_named_and_no_test_image_loses_its_row(tiny_dataset, tmp_path, capsys):
    """An undecodable training image is left out, an undecodable test image becomes ``outlier``,
    an image of another size is resized, entries that are not test images get no row, a test image
    copied from train is flagged, a partial labels file scores what it covers: each is named on
    stderr and in the report's summary, and the run completes."""
    import shutil

    from PIL import Image

    root = tmp_path / "Dataset"
    for split in ("train", "val", "test"):
        shutil.copytree(tiny_dataset / split, root / split)
    (root / "train" / "var16" / "broken.png").write_bytes(b"")
    (root / "test" / "empty.png").write_bytes(b"")
    first = sorted((root / "test").glob("*.png"))[0]
    with Image.open(first) as img:
        img.resize((96, 96)).save(root / "test" / "large.png")
        img.convert("L").save(root / "test" / "gray.png")
    (root / "test" / "notes.txt").write_text("not an image")
    shutil.copy(sorted((root / "train" / "rarb").glob("*.png"))[0], root / "test" / "copied.png")
    (root / "test" / "nested").mkdir()
    shutil.copy(first, root / "test" / "nested" / "inner.png")
    (root / "test" / "._resource_fork.png").write_bytes(b"\x00\x05\x16\x07")  # what macOS leaves beside a copy
    (root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class folder

    truth = pd.read_csv(tiny_dataset / "test_labels.csv")
    partial = pd.concat([truth.iloc[:3], pd.DataFrame({"image_name": ["ghost.png"], "label": ["var16"]})])
    partial.to_csv(tmp_path / "some_labels.csv", index=False)

    out = tmp_path / "s.csv"
    assert submission.main(["--test", str(root / "test"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                            "--labels", str(tmp_path / "some_labels.csv")]) == 0
    table = pd.read_csv(out).set_index("image_name")["label"]
    assert sorted(table.index) == sorted(p.name for p in (root / "test").iterdir() if p.suffix == ".png" and p.name[0] != ".")
    assert table["empty.png"] == "outlier" and table["large.png"] in CLASS_NAMES and table["gray.png"] in CLASS_NAMES
    err = capsys.readouterr().err
    for named in ("train/var16/broken.png", "test/empty.png", "test/large.png (96×96)", "test/notes.txt", "test/nested",
                  "test/._resource_fork.png",
                  "name no image of the test folder: ghost.png", f"{len(table) - 3} test image(s) have no label",
                  "test/copied.png (= a train image)", "test/gray.png (L)"):
        assert named in err, named
    summary = json.loads((tmp_path / "s_report" / "summary.json").read_text())
    assert summary["unreadable_labelled_images"] == [str(root / "train" / "var16" / "broken.png")]
    assert summary["unreadable_test_images"] == [str(root / "test" / "empty.png")]
    assert summary["resized_images"] == [str(root / "test" / "large.png")]
    assert summary["converted_images"] == [str(root / "test" / "gray.png")]
    assert summary["skipped_test_entries"] == [str(root / "test" / name) for name in ("._resource_fork.png", "nested", "notes.txt")]
    assert summary["test"]["n"] == 3  # only the labelled test images are scored
    assert summary["images_in_two_splits"] == [f"{root / 'test' / 'copied.png'} (= a train image)"]


def test_training_data_of_some_classes_only(tiny_dataset, tmp_path, capsys):
    """One variant of each family plus outliers: every fit works (one-variant families always name
    their variant) and only the trained classes are predicted."""
    import shutil

    kept = ("var16", "rarb", "outlier")
    for split in ("train", "val"):
        for cls in kept:
            shutil.copytree(tiny_dataset / split / cls, tmp_path / "Dataset" / split / cls)
    shutil.copytree(tiny_dataset / "test", tmp_path / "Dataset" / "test")
    out = tmp_path / "s.csv"
    assert submission.main(["--test", str(tmp_path / "Dataset" / "test"), "--cache-dir", str(tmp_path / "cache"),
                            "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["label"]) <= set(kept)
    assert "6 of the 9 classes have no training image and are never predicted: var20, var24, var30, rarl" in capsys.readouterr().err
    # a test folder of undecodable files only: every one gets outlier, and no earlier test report survives
    broken = tmp_path / "Dataset" / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "s_report" / "test.md").write_text("an earlier run's")
    assert submission.main(["--test", str(broken), "--train", str(tmp_path / "Dataset" / "train"), "--val",
                            str(tmp_path / "Dataset" / "val"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert out.read_text() == "image_name,label\nx.png,outlier\n"
    assert not (tmp_path / "s_report" / "test.md").exists()
    assert (tmp_path / "s_report" / "test_probabilities.csv").read_text().splitlines()[1] == "x.png,outlier" + "," * 9, \
        "its label, no probabilities"


def test_a_malformed_labels_file_stops_the_run_before_any_model_loads(tiny_dataset, tmp_path, monkeypatch):
    import feature_extractor

    def no_models(*args, **kwargs):
        raise AssertionError("models were loaded before --labels was checked")

    monkeypatch.setattr(feature_extractor, "FeatureExtractor", no_models)
    (tmp_path / "labels.csv").write_text("name,class\nx.png,var16\n")
    with pytest.raises(InputError, match=r"--labels: .*labels.csv: missing column\(s\) \['image_name', 'label'\]"):
        submission.main(["--test", str(tiny_dataset / "test"), "--labels", str(tmp_path / "labels.csv"),
                         "--out", str(tmp_path / "s.csv")])


def test_the_model_key_names_the_feature_columns():
    """A feature renamed with its values unchanged must not reuse models fitted on the old names
    (they select their columns by name)."""
    frame = pd.DataFrame({"var16_nll": [1.0, 2.0], "var20_nll": [3.0, 4.0]}, index=["a.png", "b.png"])
    renamed = frame.rename(columns={"var16_nll": "var16_nll_marginal"})
    assert submission._frame_digest("flat", frame) != submission._frame_digest("flat", renamed)
    assert submission._frame_digest("flat", frame) == submission._frame_digest("flat", frame.copy())
