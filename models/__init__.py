"""Model layer: the official VAR and RAR architectures, their loading, and one adapter per family.

Everything heavy is imported lazily, so ``import models`` is cheap::

    from models import load_family
    var = load_family("VAR")                 # demo zoo; or load_family("VAR", weights_dir=...)
    rec, tokens, f, f_hat = var.img_to_reconstructed_img(images01)

Modules (one concept each): ``var_vae_blocks`` (VQVAE encoder/decoder), ``var_quantizer``
(multi-scale residual quantizer — the only home of greedy VAR quantization), ``var_vqvae``,
``var_transformer``, ``var_sampler``, ``maskgit_vqgan`` (RAR's tokenizer), ``rar_generator``,
``rar_sampler``, ``registry`` (official configs + builders), ``checkpoints`` (strict loading),
``adapter`` / ``var_adapter`` / ``rar_adapter`` (family interface), ``zoo`` (demo zoo or
``--weights-dir``), ``check_reference`` (CLI proving equality with the official code), ``files`` (file hashing), and
``variant_net``, ours, not official: the small CNN that names a variant from ``f``.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_family", "FamilyAdapter", "VARIANT_NAMES", "CLASS_NAMES", "FAMILY_OF", "OFFICIAL_VARIANTS",
           "CheckpointError", "DEMO_ZOO_DIR"]

_LAZY = {
    "load_family": "zoo", "DEMO_ZOO_DIR": "zoo", "FamilyAdapter": "adapter", "CheckpointError": "checkpoints",
    "VARIANT_NAMES": "registry", "CLASS_NAMES": "registry", "FAMILY_OF": "registry", "OFFICIAL_VARIANTS": "registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
