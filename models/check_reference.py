"""Check our model code against a reference fixture made by running the official code.

    python -m models.check_reference ../shared/reference/var_small.safetensors

A fixture (``.safetensors``) carries in its metadata the family (``VAR`` / ``RAR``) and every
constructor argument, the weights under ``vae.`` / ``var.`` or ``tokenizer.`` / ``generator.``,
inputs under ``in.`` and the official outputs under ``out.``. This command rebuilds the models
from the metadata, loads the weights strictly, recomputes every ``out.*`` tensor and prints its
maximum absolute error. Exit status 0 only if every float tensor is within ``--atol``
(default 1e-4) and every integer tensor (token indices, sampled tokens) is exactly equal; an
``out.*`` entry this checker does not know how to recompute is a failure, never skipped.

Sample keys encode their settings in the name and are parsed from it:
``out.sample_cfg{cfg}_topk{k}_topp{p}_seed{s}`` (VAR) and
``out.sample_cfg{g}_pow{p}_temp{t}_seed{s}`` (RAR).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

from .checkpoints import load_strict, strip_prefix
from .rar_sampler import sample_rar_tokens
from .registry import build_maskgit_vqgan, build_rar_generator, build_var_transformer, build_var_vae
from .var_sampler import sample_var_images

__all__ = ["recompute_fixture", "check_fixture", "main"]

_VAR_SAMPLE = re.compile(r"out\.sample_cfg([\d.]+)_topk(\d+)_topp([\d.]+)_seed(\d+)$")
_RAR_SAMPLE = re.compile(r"out\.sample_cfg([\d.]+)_pow([\d.]+)_temp([\d.]+)_seed(\d+)$")
_VAR_IDX = re.compile(r"out\.idx_scale(\d+)$")


def _read_fixture(path: Path) -> Tuple[Dict[str, str], Dict[str, torch.Tensor]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    return meta, load_file(str(path))


def _var_outputs(cfg: dict, tensors: Dict[str, torch.Tensor], wanted: list) -> Dict[str, torch.Tensor]:
    vae = load_strict(build_var_vae(cfg), strip_prefix(tensors, "vae."), "fixture vae.*").eval()
    var = load_strict(build_var_transformer(cfg, cfg), strip_prefix(tensors, "var."), "fixture var.*").eval()
    image, labels = tensors["in.image"], tensors["in.labels"]
    out: Dict[str, torch.Tensor] = {}
    recipes: Dict[str, Callable[[], torch.Tensor]] = {}
    with torch.no_grad():
        encoded = vae.encoder(image)
        f = vae.quant_conv(encoded)
        idx, f_hats = vae.quantize.quantize_greedy(f)
        recipes.update({
            "out.encoder": lambda: encoded,
            "out.f": lambda: f,
            "out.f_hat": lambda: f_hats[-1],
            "out.decoder_raw": lambda: vae.decode_fhat_raw(f_hats[-1]),
            "out.fhat_to_img": lambda: vae.decode_fhat(f_hats[-1]),
            "out.idxBl_to_img": lambda: vae.idxBl_to_img(idx),
            "out.var_input": lambda: vae.quantize.teacher_forcing_input(idx),
            "out.logits_cond": lambda: var(labels, vae.quantize.teacher_forcing_input(idx)),
            "out.logits_uncond": lambda: var(torch.full_like(labels, var.num_classes), vae.quantize.teacher_forcing_input(idx)),
        })
        for key in wanted:
            if key in recipes:
                out[key] = recipes[key]()
            elif (m := _VAR_IDX.match(key)) and int(m.group(1)) < len(idx):
                out[key] = idx[int(m.group(1))]
            elif m := _VAR_SAMPLE.match(key):
                gen = torch.Generator().manual_seed(int(m.group(4)))
                out[key] = sample_var_images(var, vae, labels, cfg=float(m.group(1)), top_k=int(m.group(2)),
                                             top_p=float(m.group(3)), generator=gen)[0]
    return out


def _rar_outputs(cfg: dict, tensors: Dict[str, torch.Tensor], wanted: list) -> Dict[str, torch.Tensor]:
    tok_cfg, gen_cfg = cfg["tokenizer"], cfg["generator"]
    tokenizer = load_strict(build_maskgit_vqgan(tok_cfg), strip_prefix(tensors, "tokenizer."), "fixture tokenizer.*").eval()
    rar = load_strict(build_rar_generator(gen_cfg, tok_cfg), strip_prefix(tensors, "generator."), "fixture generator.*").eval()
    image, labels = tensors["in.image"], tensors["in.labels"]
    out: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        encoded = tokenizer.encode_f(image)
        codes, quantized = tokenizer.quantize_f(encoded)
        cond = rar.condition_ids(labels)
        recipes: Dict[str, Callable[[], torch.Tensor]] = {
            "out.encoder": lambda: encoded,
            "out.quantized": lambda: quantized,
            "out.codes": lambda: codes,
            "out.decoder_raw": lambda: tokenizer.decode_fhat_raw(tokenizer.codes_to_fhat(codes)),
            "out.decode": lambda: tokenizer.decode(codes),
            "out.condition_ids": lambda: cond,
            "out.logits_cond": lambda: rar(codes, cond),
            "out.logits_uncond": lambda: rar(codes, rar.none_condition(cond)),
        }
        for key in wanted:
            if key in recipes:
                out[key] = recipes[key]()
            elif m := _RAR_SAMPLE.match(key):
                gen = torch.Generator().manual_seed(int(m.group(4)))
                out[key] = sample_rar_tokens(rar, labels, guidance_scale=float(m.group(1)), guidance_scale_pow=float(m.group(2)),
                                             temperature=float(m.group(3)), generator=gen)
    return out


def recompute_fixture(path: Path | str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """``(expected out.* tensors, our recomputed tensors)``; keys we cannot recompute are absent."""
    meta, tensors = _read_fixture(Path(path))
    family = json.loads(meta.get("family", '""'))
    cfg = json.loads(meta.get("config", "{}"))
    expected = {k: v for k, v in tensors.items() if k.startswith("out.")}
    compute = {"VAR": _var_outputs, "RAR": _rar_outputs}.get(family)
    if compute is None:
        raise ValueError(f"{path}: metadata 'family' is {family!r}; expected 'VAR' or 'RAR'")
    return expected, compute(cfg, tensors, sorted(expected))


def check_fixture(path: Path | str, atol: float = 1e-4) -> Tuple[bool, list]:
    """Compare every ``out.*``; returns ``(all ok, rows of (key, error or message, ok))``."""
    expected, ours = recompute_fixture(path)
    rows = []
    for key in sorted(expected):
        ref = expected[key]
        if key not in ours:
            rows.append((key, "no recipe for this output", False))
            continue
        got = ours[key]
        if tuple(got.shape) != tuple(ref.shape):
            rows.append((key, f"shape {tuple(got.shape)} != {tuple(ref.shape)}", False))
        elif ref.dtype.is_floating_point:
            err = (got.double() - ref.double()).abs().max().item()
            rows.append((key, f"max abs err {err:.3e}", err <= atol))
        else:
            mismatches = int((got != ref).sum())
            rows.append((key, f"{mismatches} mismatching entries (exact)", mismatches == 0))
    return all(ok for *_, ok in rows) and bool(rows), rows


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.check_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixtures", nargs="+", type=Path, help="fixture .safetensors files")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance for float outputs (default 1e-4)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    all_ok = True
    for path in args.fixtures:
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            all_ok = False
            continue
        ok, rows = check_fixture(path, args.atol)
        print(f"== {path}")
        for key, message, row_ok in rows:
            print(f"  {'ok  ' if row_ok else 'FAIL'} {key:45s} {message}")
        print(f"  -> {'PASS' if ok else 'FAIL'}")
        all_ok &= ok
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
