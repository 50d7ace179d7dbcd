"""Shared fixtures: the reference fixtures copied from the official code's runs, loaded as adapters."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "reference"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _same_threads_for_every_test():
    """``submission.main`` sizes torch's thread pool to the machine (``runtime.use_usable_cores``);
    each test starts with the suite's 2 threads again, whatever ran before it (tests that compare
    numbers exactly depend on the kernels' thread count)."""
    yield
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _no_figure_left_open():
    """Tests that read a plot keep its figure open (``plt.close`` patched to collect it); closed
    after each test, so figures do not pile up across the suite (matplotlib warns past 20)."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


@pytest.fixture
def one_small_lightgbm():
    """The classifiers' tuning grid cut to one small LightGBM (10 trees), for tests of what the
    fitting code writes and keeps, not of what it learns: every fit of a flat or family
    classifier (tuning folds, calibration, the blend's out-of-fold fits) gets several times faster."""
    import variant_classifier

    grid = [dict(num_leaves=3, learning_rate=0.3, n_estimators=10, min_child_samples=5)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(variant_classifier, "PARAM_GRID", grid)
        yield grid


def read_fixture(name: str):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = REFERENCE / name
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    return {k: json.loads(v) for k, v in meta.items()}, load_file(str(path))


@pytest.fixture(scope="session")
def var_fixture():
    return read_fixture("var_small.safetensors")


@pytest.fixture(scope="session")
def rar_fixture():
    return read_fixture("rar_small.safetensors")


def _save(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


@pytest.fixture(scope="session")
def small_zoo_dir(tmp_path_factory, var_fixture, rar_fixture) -> Path:
    """A zoo folder (``zoo.json`` + safetensors) built from the two reference fixtures."""
    from models.checkpoints import strip_prefix

    out = tmp_path_factory.mktemp("small_zoo")
    var_meta, var_t = var_fixture
    rar_meta, rar_t = rar_fixture
    _save(strip_prefix(var_t, "vae."), out / "var_tok.safetensors")
    _save(strip_prefix(var_t, "var."), out / "var_gen.safetensors")
    _save(strip_prefix(rar_t, "tokenizer."), out / "rar_tok.safetensors")
    _save(strip_prefix(rar_t, "generator."), out / "rar_gen.safetensors")
    vcfg, rcfg = var_meta["config"], rar_meta["config"]
    manifest = {
        "image_size": 64, "num_classes": 10, "class_names": [f"c{i}" for i in range(10)],
        "families": {
            "VAR": {"tokenizer": {"file": "var_tok.safetensors", "config": vcfg},
                    "variants": {"var16": {"file": "var_gen.safetensors", "config": vcfg,
                                           "sampling": {"cfg": 1.5, "top_k": 10, "top_p": 0.9}}}},
            "RAR": {"tokenizer": {"file": "rar_tok.safetensors", "config": rcfg["tokenizer"]},
                    "variants": {"rarb": {"file": "rar_gen.safetensors", "config": rcfg["generator"],
                                          "sampling": {"guidance_scale": 4.0, "guidance_scale_pow": 2.5, "temperature": 1.02}}}},
        },
    }
    (out / "zoo.json").write_text(json.dumps(manifest))
    return out
