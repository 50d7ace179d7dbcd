"""The demo-zoo build is reproducible: same seed → same weight hashes, checked on the ``--quick`` plan
(the full plan runs the same code with more steps), and an ``--only`` rebuild of the variants sees the
same tokens as a full build."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_demo_zoo  # noqa: E402


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "a"
    build_demo_zoo.build(out, seed=0, quick=True, progress=False)
    return out


def test_quick_build_is_reproducible(quick_zoo, tmp_path):
    build_demo_zoo.build(tmp_path / "b", seed=0, quick=True, progress=False)
    first = (quick_zoo / "SHA256SUMS").read_text()
    assert (tmp_path / "b" / "SHA256SUMS").read_text() == first
    assert len(first.splitlines()) == 12  # 3 tokenizers + 8 variants + the outlier IAR


def test_only_rebuild_matches_the_full_build(quick_zoo, tmp_path):
    """Retraining variants with ``only`` on the saved (float16) tokenizers gives the full build's weights,
    because the full build tokenizes with its tokenizer rounded as shipped."""
    out = tmp_path / "zoo"
    shutil.copytree(quick_zoo, out)
    kept = _without(out, ["var20", "rarl"])
    build_demo_zoo.build(out, seed=0, quick=True, progress=False, only=["var20", "rarl"])
    assert (out / "SHA256SUMS").read_text() == (quick_zoo / "SHA256SUMS").read_text()
    assert _stamps(out, kept) == kept, "only the variants asked for are trained again"


def test_each_tokenizer_reports_its_own_metrics(quick_zoo, tmp_path):
    """The outlier tokenizer's PSNR is measured on its own (it once inherited the RAR tokenizer's), and
    rebuilding only the outlier IAR works and reproduces its weights."""
    psnr = json.loads((quick_zoo / "zoo.json").read_text())["metrics"]["psnr_val"]
    assert len({psnr["VAR"], psnr["RAR"], psnr["OUTLIER"]}) == 3, psnr
    out = tmp_path / "zoo"
    shutil.copytree(quick_zoo, out)
    kept = _without(out, ["outlier_iar"])
    build_demo_zoo.build(out, seed=0, quick=True, progress=False, only=["outlier_iar"])
    assert (out / "SHA256SUMS").read_text() == (quick_zoo / "SHA256SUMS").read_text()
    assert _stamps(out, kept) == kept
    assert json.loads((out / "zoo.json").read_text())["metrics"]["psnr_val"]["OUTLIER"] == psnr["OUTLIER"]


def _without(zoo: Path, names) -> dict:
    """Deletes ``zoo``'s files of ``names`` (so a rebuild must make them) and returns the
    modification times of the weight files left."""
    for name in names:
        (zoo / f"{name}.safetensors").unlink()
    return _stamps(zoo, {p.name: None for p in zoo.glob("*.safetensors")})


def _stamps(zoo: Path, files) -> dict:
    return {name: (zoo / name).stat().st_mtime_ns for name in files}


def test_as_shipped_rounds_to_float16_in_place():
    layer = torch.nn.Linear(3, 3)
    with torch.no_grad():
        layer.weight.fill_(0.1)
    build_demo_zoo._as_shipped(layer)
    assert layer.weight.dtype == torch.float32
    assert torch.equal(layer.weight, torch.full((3, 3), 0.1).half().float())


def test_variant_net_stage_is_reproducible(quick_zoo, tmp_path):
    """``--stage variant-nets`` after the plain inverse decoders: the same net files twice, listed in
    ``SHA256SUMS``, naming each family's variants."""
    import variant_net

    zoo = tmp_path / "zoo"
    shutil.copytree(quick_zoo, zoo)
    build_demo_zoo.build_inverse_decoders(zoo, seed=0, quick=True, progress=False, families=("VAR", "RAR"), kinds=["plain"])
    sums = []
    for _ in range(2):
        shutil.rmtree(zoo / "variant_nets", ignore_errors=True)  # trained again, not found
        build_demo_zoo.build_variant_nets(zoo, seed=0, quick=True, progress=False)
        sums.append((zoo / "SHA256SUMS").read_text())
    assert sums[0] == sums[1]
    for family in variant_net.NET_FAMILIES:
        assert f"variant_nets/{family}/variant_net.safetensors" in sums[0]
        names = variant_net.load_variant_net(variant_net.shipped_file(zoo, family))[1]
        assert names == list(json.loads((zoo / "zoo.json").read_text())["families"][family]["variants"])


def test_a_seed_the_later_stages_refuse_is_one_error_line_before_any_training(tmp_path):
    """``--seed 10``: the inverse decoders' and variant nets' generation seeds allow 0 … 9, so the
    command stops at once with one ``error:`` line (it once trained the models first, then crashed)."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_demo_zoo.py"), "--seed", "10", "--quick",
                           "--stage", "variant-nets", "--out", str(tmp_path / "zoo"), "--no-map-cache"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: --seed 10:") and "0 … 9" in done.stderr


def _stages_recorded(monkeypatch) -> dict:
    """``build_demo_zoo``'s three stages replaced by recorders of their keyword arguments."""
    seen: dict = {}

    def build(out, seed, quick, progress=True, only=None):
        seen["models"] = dict(only=only)
        return {"metrics": {"nll_val": {}, "psnr_val": {}}, "families": {}}

    monkeypatch.setattr(build_demo_zoo, "build", build)
    monkeypatch.setattr(build_demo_zoo, "build_inverse_decoders", lambda *a, **kw: seen.setdefault("inv-decoders", kw))
    monkeypatch.setattr(build_demo_zoo, "build_variant_nets", lambda *a, **kw: seen.setdefault("variant-nets", kw))
    monkeypatch.setattr(build_demo_zoo, "keep_freed_memory", lambda: None)
    return seen


def test_stage_all_fine_tunes_only_the_inverse_decoders_asked_for(monkeypatch, tmp_path):
    seen = _stages_recorded(monkeypatch)
    assert build_demo_zoo.main(["--out", str(tmp_path), "--inv-kinds", "plain", "--no-progress"]) == 0
    assert seen["inv-decoders"]["kinds"] == ["plain"]
    seen.clear()
    assert build_demo_zoo.main(["--out", str(tmp_path), "--stage", "inv-decoders", "--inv-kinds", "augmented"]) == 0
    assert seen["inv-decoders"]["kinds"] == ["augmented"]


def test_only_names_a_misspelled_variant_before_any_work(monkeypatch, tmp_path):
    from cli import InputError

    seen = _stages_recorded(monkeypatch)
    for stage in ("all", "variant-nets"):
        with pytest.raises(InputError, match=r"--only var17: no such variant; the zoo's are var16, .*outlier_iar"):
            build_demo_zoo.main(["--out", str(tmp_path), "--only", "var16", "var17", "--stage", stage])
    assert not seen
