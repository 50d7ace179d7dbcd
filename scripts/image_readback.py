"""What the PNG image records of the generator's ``f̂``, and what reading it back at test time gets.

The variant net's accuracy hangs on how near its input lies to the ``f̂`` the generator decoded
(`docs/attribution.md`, *What the inverse decoder costs the net*). Two measurements of
``scripts/diagnose_variant_net.py`` ask the image itself:

* :func:`refinement_row` (``--refine-steps``): Adam steps on the image error through the frozen
  decoder, from the inverse decoder's ``f``. Does fitting the image lead back to ``f̂``?
* :func:`identifiability_row` (``--identifiability-images``): the decoder's Jacobian at ``f̂`` splits
  the error ``f − f̂`` along its singular directions; where a direction changes the image by less than
  the PNG file's rounding (:data:`PNG_ROUNDING_VARIANCE` per pixel), no reader of the image can get
  the error back. The share of the error's energy there, and the error a linear reader that knows
  each direction to its rounding noise would keep.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.adapter import FamilyAdapter  # noqa: E402
from signals import optimise_latent  # noqa: E402

__all__ = ["PNG_ROUNDING_VARIANCE", "refinement_row", "identifiability_row"]

PNG_ROUNDING_VARIANCE = (1 / 255) ** 2 / 12  # per pixel in [0, 1] units: uniform rounding to 8-bit levels


def refinement_row(adapter: FamilyAdapter, images: torch.Tensor, f: torch.Tensor, f_hat: torch.Tensor, steps: int, lr: float) -> dict:
    """Latent refinement from ``f``: MSE to ``f̂`` and image error, before and after ``steps`` Adam steps."""
    from quantizer import per_image_mse

    start = time.perf_counter()
    with torch.no_grad():
        before = float(per_image_mse(adapter.decode(f), images).mean())
    refined, error = optimise_latent(adapter, images, f, steps, lr, halve_every=max(1, steps // 2))
    return dict(input=f"adam_refined_{steps}_steps", images=len(images), fmse_to_fhat=float((refined.cpu() - f_hat).pow(2).mean()),
                fmse_to_fhat_before=float((f - f_hat).pow(2).mean()), image_mse_before=before,
                image_mse=float(error.mean()), seconds=round(time.perf_counter() - start, 1))


def identifiability_row(adapter: FamilyAdapter, f_NChw: torch.Tensor, f_hat_NChw: torch.Tensor, chunk: int = 64) -> dict:
    """How much of the error ``f − f̂`` the PNG image records, linearised at ``f̂`` (module docstring,
    ``--identifiability-images``): the share of its energy below the rounding noise and the squared
    error a linear reader of the image would keep."""
    start = time.perf_counter()
    hidden, kept, before = [], [], []
    shape = f_hat_NChw.shape[1:]
    basis = torch.eye(shape.numel())
    for f, f_hat in zip(f_NChw.float(), f_hat_NChw.float()):
        point = f_hat.flatten()

        def decode(z: torch.Tensor) -> torch.Tensor:
            return adapter.decode(z.view(1, *shape)).float().flatten()

        def push(u: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(decode, (point,), (u,))[1]

        with warnings.catch_warnings():  # torch's forward-mode AD loads its decompositions through the deprecated torch.jit.script
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
            jacobian = torch.cat([torch.func.vmap(push)(basis[i:i + chunk]) for i in range(0, len(basis), chunk)]).T  # pixels × latent
        _, S, Vh = torch.linalg.svd(jacobian, full_matrices=False)
        c = Vh @ (f.flatten() - point)
        noise = PNG_ROUNDING_VARIANCE / S.pow(2).clamp_min(1e-30)
        below = S.pow(2) * c.pow(2) < PNG_ROUNDING_VARIANCE
        hidden.append(float(c[below].pow(2).sum() / c.pow(2).sum()))
        kept.append(float((c.pow(2) * noise / (c.pow(2) + noise)).mean()))
        before.append(float(c.pow(2).mean()))
    return dict(input="image_identifiability", images=len(f_NChw), fmse_to_fhat=sum(kept) / len(kept),
                fmse_to_fhat_before=sum(before) / len(before), hidden_error_share=sum(hidden) / len(hidden),
                seconds=round(time.perf_counter() - start, 1))
