"""Reading weight files and loading them strictly.

Supported: the official ``.pth`` / ``.bin`` checkpoints (read with ``torch.load(...,
weights_only=True)`` — never unpickling arbitrary objects) and our ``.safetensors``. Loading is
strict: any missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError`
naming the file, the offending keys and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional

import torch
import torch.nn as nn

if TYPE_CHECKING:
    import hashlib

__all__ = ["CheckpointError", "read_state_dict", "load_strict", "strip_prefix", "hash_tensors"]


class CheckpointError(RuntimeError):
    """A weight file is missing, unreadable or does not fit the architecture."""


def read_state_dict(path: Path | str) -> Dict[str, torch.Tensor]:
    """All tensors of a ``.pth``/``.bin``/``.pt`` or ``.safetensors`` file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path} (check --weights-dir and the file name)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, ignore: Optional[set] = None) -> nn.Module:
    """Load ``state`` into ``module`` requiring exactly the same keys and shapes."""
    expected = module.state_dict()
    ignore = ignore or set()
    missing = sorted(set(expected) - set(state) - ignore)
    unexpected = sorted(set(state) - set(expected) - ignore)
    wrong_shape = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape) and k not in ignore
    )
    if missing or unexpected or wrong_shape:
        def show(items: list) -> str:
            return ", ".join(items[:8]) + (f" … (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"{source} does not fit {type(module).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches ({len(wrong_shape)}): {show(wrong_shape)}")
        parts.append("Is this the right file for this model, with the configuration it was trained with?")
        raise CheckpointError("\n  ".join(parts))
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return module


def hash_tensors(hasher: "hashlib._Hash", prefix: str, state: Mapping[str, torch.Tensor]) -> None:
    """Feed ``hasher`` every tensor of ``state`` in key order: ``{prefix}.{key}``, dtype, shape and
    bytes (read on the CPU), so the digest names the values whatever device or layout holds them."""
    for key, tensor in sorted(state.items()):
        hasher.update(f"{prefix}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
