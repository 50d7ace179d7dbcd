"""Model registry: the 8 official ImageNet-256 variants and how to build any configuration.

Configurations are plain dicts. A *family* config has a ``tokenizer`` part (VAR VQVAE or
MaskGIT-VQGAN), and each *variant* adds a ``generator`` part, its official sampling settings and
the official file names, so that ``--weights-dir`` can point at a folder of the published files.

Builders take the dicts used by the reference fixtures, too: VAR keys ``V, Cvae, ch,
share_quant_resi, patch_nums, depth, embed_dim, num_heads, num_classes, attn_l2_norm,
shared_aln`` and RAR ``tokenizer`` / ``generator`` sub-dicts as in the official YAML configs.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping

from .maskgit_vqgan import MaskGITVQGAN
from .rar_generator import RARGenerator
from .var_transformer import VARTransformer
from .var_vqvae import OFFICIAL_VAR_CH_MULT, VARVQVAE

__all__ = [
    "CLASS_NAMES", "VARIANT_NAMES", "FAMILIES", "FAMILY_OF", "family_variants", "OFFICIAL_VARIANTS", "official_variant",
    "build_var_vae", "build_var_transformer", "build_maskgit_vqgan", "build_rar_generator",
]

VARIANT_NAMES = ("var16", "var20", "var24", "var30", "rarb", "rarl", "rarxl", "rarxxl")
CLASS_NAMES = VARIANT_NAMES + ("outlier",)
FAMILIES = ("VAR", "RAR")  # the families of the official models (the demo zoo adds "OUTLIER", no class of its own)
FAMILY_OF = {name: ("VAR" if name.startswith("var") else "RAR") for name in VARIANT_NAMES}

OFFICIAL_VAR_TOKENIZER: Dict[str, Any] = dict(
    V=4096, Cvae=32, ch=160, share_quant_resi=4, patch_nums=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
    ch_mult=list(OFFICIAL_VAR_CH_MULT), image_size=256,
)
OFFICIAL_RAR_TOKENIZER: Dict[str, Any] = dict(
    channel_mult=[1, 1, 2, 2, 4], num_resolutions=5, dropout=0.0, hidden_channels=128, num_channels=3,
    num_res_blocks=2, resolution=256, z_channels=256, codebook_size=1024,
)


def family_variants(family: str) -> List[str]:
    """The variants of ``family`` (``VAR`` or ``RAR``), in :data:`VARIANT_NAMES` order."""
    return [name for name in VARIANT_NAMES if FAMILY_OF[name] == family]


def _var_variant(depth: int) -> Dict[str, Any]:
    return {
        "family": "VAR",
        "tokenizer": OFFICIAL_VAR_TOKENIZER,
        # width 64·depth, heads = depth, attention with L2-normalised q/k (``build_vae_var``)
        "generator": dict(depth=depth, embed_dim=64 * depth, num_heads=depth, num_classes=1000,
                          attn_l2_norm=True, shared_aln=False),
        # the official FID sampling settings (VAR README)
        "sampling": dict(cfg=1.5, top_k=900, top_p=0.96),
        "files": {"tokenizer": "vae_ch160v4096z32.pth", "generator": f"var_d{depth}.pth"},
        "manifest": {"tokenizer": "var_vae_ch160v4096z32", "generator": f"var_d{depth}"},
    }


def _rar_variant(size: str, hidden: int, layers: int, mlp: int, guidance: float, power: float, temp: float) -> Dict[str, Any]:
    return {
        "family": "RAR",
        "tokenizer": OFFICIAL_RAR_TOKENIZER,
        "generator": dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=16,
                          intermediate_size=mlp, image_seq_len=256, condition_num_classes=1000, codebook_size=1024),
        # the official sampling settings (README_RAR)
        "sampling": dict(guidance_scale=guidance, guidance_scale_pow=power, temperature=temp),
        "files": {"tokenizer": "maskgit-vqgan-imagenet-f16-256.bin", "generator": f"rar_{size}.bin"},
        "manifest": {"tokenizer": "maskgit_vqgan_imagenet_f16_256", "generator": f"rar_{size}"},
    }


OFFICIAL_VARIANTS: Dict[str, Dict[str, Any]] = {
    "var16": _var_variant(16),
    "var20": _var_variant(20),
    "var24": _var_variant(24),
    "var30": _var_variant(30),
    "rarb": _rar_variant("b", 768, 24, 3072, 16.0, 2.75, 1.0),
    "rarl": _rar_variant("l", 1024, 24, 4096, 15.5, 2.5, 1.02),
    "rarxl": _rar_variant("xl", 1280, 32, 5120, 6.9, 1.5, 1.02),
    "rarxxl": _rar_variant("xxl", 1408, 40, 6144, 8.0, 1.2, 1.02),
}


def official_variant(name: str) -> Dict[str, Any]:
    """A deep copy of the official config of ``name`` (one of :data:`VARIANT_NAMES`)."""
    if name not in OFFICIAL_VARIANTS:
        raise KeyError(f"unknown variant {name!r}; choose one of {', '.join(VARIANT_NAMES)}")
    return copy.deepcopy(OFFICIAL_VARIANTS[name])


# ---------------------------------------------------------------------- builders
def build_var_vae(cfg: Mapping[str, Any]) -> VARVQVAE:
    return VARVQVAE(
        vocab_size=cfg["V"], z_channels=cfg["Cvae"], ch=cfg["ch"], patch_nums=cfg["patch_nums"],
        share_quant_resi=cfg.get("share_quant_resi", 4), quant_resi=cfg.get("quant_resi", 0.5),
        ch_mult=cfg.get("ch_mult", OFFICIAL_VAR_CH_MULT), num_res_blocks=cfg.get("num_res_blocks", 2),
    )


def build_var_transformer(cfg: Mapping[str, Any], tokenizer_cfg: Mapping[str, Any]) -> VARTransformer:
    depth = cfg["depth"]
    return VARTransformer(
        V=tokenizer_cfg["V"], Cvae=tokenizer_cfg["Cvae"], patch_nums=tokenizer_cfg["patch_nums"],
        num_classes=cfg.get("num_classes", 1000), depth=depth, embed_dim=cfg.get("embed_dim", 64 * depth),
        num_heads=cfg.get("num_heads", depth), mlp_ratio=cfg.get("mlp_ratio", 4.0), norm_eps=cfg.get("norm_eps", 1e-6),
        shared_aln=cfg.get("shared_aln", False), attn_l2_norm=cfg.get("attn_l2_norm", True),
        cond_drop_rate=cfg.get("cond_drop_rate", 0.1), drop_path_rate=cfg.get("drop_path_rate", 0.0),
    )


def build_maskgit_vqgan(cfg: Mapping[str, Any]) -> MaskGITVQGAN:
    return MaskGITVQGAN(**dict(cfg))


def build_rar_generator(cfg: Mapping[str, Any], tokenizer_cfg: Mapping[str, Any]) -> RARGenerator:
    merged = dict(cfg)
    if "codebook_size" not in merged:
        merged["codebook_size"] = tokenizer_cfg["codebook_size"]
    return RARGenerator(**merged)
