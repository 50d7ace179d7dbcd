"""Where weights come from: the embedded demo zoo by default, or ``--weights-dir``.

* No ``weights_dir``: the demo zoo shipped in ``demo_zoo/`` (``zoo.json`` + safetensors), small
  stand-ins for the 8 official models trained here on natural photos (see
  ``scripts/build_demo_zoo.py``).
* ``weights_dir`` holding ``zoo.json``: another zoo of that format.
* Otherwise ``weights_dir`` must hold the official file names (``vae_ch160v4096z32.pth``,
  ``var_d16.pth`` … ``var_d30.pth``, ``maskgit-vqgan-imagenet-f16-256.bin``, ``rar_b.bin`` …
  ``rar_xxl.bin``); the official configs come from :mod:`models.registry`. A missing variant file
  is reported when that variant is first used, with the expected path.

Families: ``"VAR"`` and ``"RAR"``; the demo zoo also has ``"OUTLIER"`` (a third IAR used only to
make outlier images).

:func:`weights_digest` names what a family's adapter is made of (its files' sha256, configurations
and sampling settings): the inverse decoders and variant nets trained on those weights record it,
so a cache made from other weights is refused, not reused. :func:`load_family` gives each adapter
its digest (computed when first asked for).
"""
from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from .adapter import FamilyAdapter
from .files import file_digest
from .checkpoints import CheckpointError, load_strict, misfit, read_state_dict, state_dict_shapes
from .rar_adapter import RARAdapter
from .registry import (OFFICIAL_VARIANTS, build_maskgit_vqgan, build_rar_generator, build_var_transformer,
                       build_var_vae)
from .var_adapter import VARAdapter
from .var_vqvae import VARVQVAE

__all__ = ["DEMO_ZOO_DIR", "load_family", "read_zoo_manifest", "is_zoo_dir", "check_weights_dir", "check_family_weights", "family_files", "family_image_size",
           "weights_digest"]

DEMO_ZOO_DIR = Path(__file__).resolve().parent.parent / "demo_zoo"
_VAE_STATS_KEY = "quantize.ema_vocab_hit_SV"


def is_zoo_dir(path: Path | str) -> bool:
    return (Path(path) / "zoo.json").is_file()


def read_zoo_manifest(zoo_dir: Path | str = DEMO_ZOO_DIR) -> Dict[str, Any]:
    path = Path(zoo_dir) / "zoo.json"
    if not path.is_file():
        hint = "run `python scripts/build_demo_zoo.py`" if Path(zoo_dir) == DEMO_ZOO_DIR else "is this a zoo folder?"
        raise CheckpointError(f"no zoo manifest at {path} ({hint})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); restore it from the zoo it came with") from None


def _loaded(module: nn.Module, path: Path) -> nn.Module:
    ignore = {_VAE_STATS_KEY} if isinstance(module, VARVQVAE) else None
    return load_strict(module, read_state_dict(path), str(path), ignore=ignore).eval()


def _builders(family: str):
    if family == "VAR":
        return VARAdapter, build_var_vae, build_var_transformer
    return RARAdapter, build_maskgit_vqgan, build_rar_generator


def _make_adapter(family: str, tok_cfg: dict, tok_path: Path, variants: Dict[str, tuple], image_size: int,
                  num_classes: int, device: str) -> FamilyAdapter:
    adapter_cls, build_tok, build_gen = _builders(family)
    tokenizer = _loaded(build_tok(tok_cfg), tok_path)

    def loader(gen_cfg: dict, path: Path) -> Callable[[], nn.Module]:
        return lambda: _loaded(build_gen(gen_cfg, tok_cfg), path)

    loaders = {name: loader(cfg, path) for name, (cfg, path, _) in variants.items()}
    sampling = {name: sampling for name, (_, _, sampling) in variants.items()}
    return adapter_cls(tokenizer, loaders, sampling, image_size, num_classes, device)


def check_weights_dir(weights_dir: Optional[Path | str]) -> Path:
    """``weights_dir`` as a path (the demo zoo for ``None``); a :class:`CheckpointError` naming it
    if it is not a folder."""
    folder = Path(weights_dir) if weights_dir is not None else DEMO_ZOO_DIR
    if not folder.is_dir():
        raise CheckpointError(f"--weights-dir {folder}: no such folder; give the folder that holds the official "
                              "checkpoint files (or a zoo folder with zoo.json)")
    return folder


class _FamilySources(NamedTuple):
    """Where a family's adapter comes from: its tokenizer and each variant's (config, file, sampling)."""
    family: str  # "VAR" or "RAR": which architecture
    tok_cfg: dict
    tok_path: Path
    variants: Dict[str, Tuple[dict, Path, dict]]
    image_size: int
    num_classes: int


def _family_sources(family: str, weights_dir: Optional[Path | str]) -> _FamilySources:
    family = family.upper()
    zoo_dir = check_weights_dir(weights_dir)
    if weights_dir is None or is_zoo_dir(zoo_dir):
        manifest = read_zoo_manifest(zoo_dir)
        families = manifest.get("families") if isinstance(manifest, dict) else None
        if not isinstance(families, dict):
            raise CheckpointError(f"{zoo_dir / 'zoo.json'} names no families; restore it from the zoo it came with")
        if family not in families:  # a KeyError: callers ask for a family a zoo may lack
            raise KeyError(f"{zoo_dir}/zoo.json has no family {family!r}; it has {', '.join(families)}")
        try:
            fam = families[family]
            variants = {name: (v["config"], zoo_dir / v["file"], v.get("sampling", {})) for name, v in fam["variants"].items()}
            return _FamilySources("VAR" if family == "VAR" else "RAR", fam["tokenizer"]["config"], zoo_dir / fam["tokenizer"]["file"],
                                  variants, manifest["image_size"], manifest["num_classes"])
        except (KeyError, TypeError, AttributeError) as err:  # a field missing, or of the wrong kind
            raise CheckpointError(f"{zoo_dir / 'zoo.json'} lacks a field of family {family} ({type(err).__name__}: {err}); "
                                  "restore it from the zoo it came with") from None
    if family not in ("VAR", "RAR"):
        raise KeyError(f"official weights exist only for VAR and RAR, not {family!r}")
    official = {name: cfg for name, cfg in OFFICIAL_VARIANTS.items() if cfg["family"] == family}
    first = next(iter(official.values()))
    variants = {name: (cfg["generator"], zoo_dir / cfg["files"]["generator"], cfg["sampling"]) for name, cfg in official.items()}
    tok_cfg = first["tokenizer"]
    image_size = tok_cfg.get("image_size", tok_cfg.get("resolution", 256))
    return _FamilySources(family, tok_cfg, zoo_dir / first["files"]["tokenizer"], variants, image_size, 1000)


def family_image_size(family: str, weights_dir: Optional[Path | str] = None) -> int:
    """The side of the square images ``family``'s models from ``weights_dir`` (default: the demo zoo)
    read and make, without loading them."""
    return _family_sources(family, weights_dir).image_size


def check_family_weights(family: str, weights_dir: Optional[Path | str] = None) -> None:
    """A :class:`CheckpointError` for the first weight file of ``family`` (its tokenizer's, then each
    variant's generator's) that cannot be read or does not fit its model. Keys and shapes are compared
    with the model built on torch's ``meta`` device: no memory, and no tensor of the file is read, so
    a wrong file is named before any work, not when its generator is first used hours later."""
    sources = _family_sources(family, weights_dir)
    _, build_tok, build_gen = _builders(sources.family)
    with torch.device("meta"):
        modules = [(build_tok(sources.tok_cfg), sources.tok_path)]
        modules += [(build_gen(cfg, sources.tok_cfg), path) for cfg, path, _ in sources.variants.values()]
    for module, path in modules:
        ignore = {_VAE_STATS_KEY} if isinstance(module, VARVQVAE) else None
        expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
        problem = misfit(expected, state_dict_shapes(path), str(path), type(module).__name__, ignore)
        if problem:
            raise CheckpointError(problem)


def family_files(family: str, weights_dir: Optional[Path | str] = None) -> List[Path]:
    """The weight files ``family``'s adapter from ``weights_dir`` (default: the demo zoo) loads:
    its tokenizer's, then each variant's generator's (a ``KeyError`` for a family the zoo lacks)."""
    sources = _family_sources(family, weights_dir)
    return [sources.tok_path] + [path for _, path, _ in sources.variants.values()]


def weights_digest(family: str, weights_dir: Optional[Path | str] = None) -> str:
    """sha256 naming every weight ``family``'s adapter from ``weights_dir`` (default: the demo zoo)
    is made of: the sha256 of its tokenizer's and generators' files, their configurations, the
    sampling settings, image size and class count. Not the folder's path: a copy of a zoo has the
    digest of the original."""
    sources = _family_sources(family, weights_dir)
    described = {"family": sources.family, "image_size": sources.image_size, "num_classes": sources.num_classes,
                 "tokenizer": [sources.tok_cfg, file_digest(sources.tok_path)],
                 "variants": {name: [cfg, sampling, file_digest(path)] for name, (cfg, path, sampling) in sources.variants.items()}}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def load_family(family: str, weights_dir: Optional[Path | str] = None, device: str = "cpu") -> FamilyAdapter:
    """Adapter for ``family`` from the demo zoo, a zoo folder, or a folder of official files;
    its ``weights_digest`` is :func:`weights_digest` of the same (computed when first asked for)."""
    sources = _family_sources(family, weights_dir)
    adapter = _make_adapter(sources.family, sources.tok_cfg, sources.tok_path, sources.variants, sources.image_size,
                            sources.num_classes, device)
    adapter.weights_digest_source = partial(weights_digest, family, weights_dir)
    return adapter
