"""Reading weight files and loading them strictly.

Supported: the official ``.pth`` / ``.bin`` checkpoints (read with ``torch.load(...,
weights_only=True)`` — never unpickling arbitrary objects) and our ``.safetensors``. Loading is
strict: any missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError`
naming the file, the offending keys and what to do. :func:`state_dict_shapes` reads a file's keys and
shapes without its tensors, so a file can be checked against its model (:func:`misfit`) before any
work, without the gigabytes of an official checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

if TYPE_CHECKING:
    import hashlib

__all__ = ["CheckpointError", "read_state_dict", "state_dict_shapes", "misfit", "load_strict", "strip_prefix", "hash_tensors"]


class CheckpointError(RuntimeError):
    """A weight file is missing, unreadable or does not fit the architecture."""


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """One line for a weight file that cannot be read: torch's own messages can be empty (an empty
    file) or advise unpickling it unsafely (a file that is not a checkpoint)."""
    size = path.stat().st_size if path.is_file() else 0
    what = "it is empty" if size == 0 else f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    return CheckpointError(f"cannot read {path} ({what}); it is damaged, cut short or not a checkpoint: download it again")


def _state_dict_of(obj: object, path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint, unwrapped from ``state_dict`` / ``model`` / ``module``."""
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


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
        raise _unreadable(path, exc) from exc
    return _state_dict_of(obj, path)


def state_dict_shapes(path: Path | str) -> Dict[str, Tuple[int, ...]]:
    """The shape of every tensor of a weight file, read without reading the tensors where the format
    allows (the header of a ``.safetensors`` file; ``torch.load`` memory-mapped for a zip checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path} (check --weights-dir and the file name)")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # a legacy (non-zip) file: read it all
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise _unreadable(path, exc) from exc
    return {key: tuple(tensor.shape) for key, tensor in _state_dict_of(obj, path).items()}


def misfit(expected: Mapping[str, Tuple[int, ...]], found: Mapping[str, Tuple[int, ...]], source: str, model: str,
           ignore: Optional[set] = None) -> Optional[str]:
    """Why tensors of the shapes ``found`` (key → shape, from ``source``) do not fit a ``model`` of the
    shapes ``expected``: missing and unexpected keys and shape mismatches; ``None`` when they fit."""
    ignore = ignore or set()
    missing = sorted(set(expected) - set(found) - ignore)
    unexpected = sorted(set(found) - set(expected) - ignore)
    wrong_shape = sorted(f"{k}: file {tuple(found[k])} vs model {tuple(expected[k])}"
                         for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]) and k not in ignore)
    if not (missing or unexpected or wrong_shape):
        return None

    def show(items: list) -> str:
        return ", ".join(items[:8]) + (f" … (+{len(items) - 8} more)" if len(items) > 8 else "")

    parts = [f"{source} does not fit {model}:"]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
    if wrong_shape:
        parts.append(f"shape mismatches ({len(wrong_shape)}): {show(wrong_shape)}")
    parts.append("Is this the right file for this model, with the configuration it was trained with?")
    return "\n  ".join(parts)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, ignore: Optional[set] = None) -> nn.Module:
    """Load ``state`` into ``module`` requiring exactly the same keys and shapes (:func:`misfit`)."""
    expected = module.state_dict()
    problem = misfit({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in state.items()},
                     source, type(module).__name__, ignore)
    if problem:
        raise CheckpointError(problem)
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return module


def hash_tensors(hasher: "hashlib._Hash", prefix: str, state: Mapping[str, torch.Tensor]) -> None:
    """Feed ``hasher`` every tensor of ``state`` in key order: ``{prefix}.{key}``, dtype, shape and
    bytes (read on the CPU), so the digest names the values whatever device or layout holds them."""
    for key, tensor in sorted(state.items()):
        hasher.update(f"{prefix}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
