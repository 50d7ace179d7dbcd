"""Learned correctors of the inverse decoder's map: how much of the generator's ``f̂`` can be read
back beyond the fixed re-encoding rule?

The variant net reads ``g = f + f − D⁻¹(D(f))``, the inverse decoder's ``f = D⁻¹(x)`` with one
re-encoding correction; its accuracy hangs on how near ``g`` lies to the ``f̂`` the generator decoded
(`docs/attribution.md`, *What the inverse decoder costs the net*). A :class:`Corrector` is fitted on
fresh generations, where ``f̂`` is known, to map what a test image gives to ``f̂``:

* from ``f`` and ``g`` alone (``image_downsampling = 0``): is more of ``f̂`` in ``f`` than the rule
  takes out?
* with the PNG image beside them (``image_downsampling = log2(image size / map size)``: a stem of
  strided convolutions brings the image to the map's grid): does the image hold what the inverse
  decoder misses, and can a network read it? About half of the error lies in directions the decoder
  turns into changes below the PNG's rounding, which no reader can get back
  (``scripts/diagnose_variant_net.py --identifiability-images``); the other half it records.

Used by ``scripts/diagnose_variant_net.py`` (``--corrector-epochs``, ``--image-corrector-epochs``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

__all__ = ["Corrector", "fit_corrector", "corrected", "unit_images"]


class Corrector(nn.Module):
    """``f̂ ≈ g + C([f, g, stem(x)])``: a small residual CNN over the inverse decoder's ``f`` and its
    re-encoded ``g`` (both ``B×C×h×w``) and, with ``image_downsampling = k > 0``, the image ``x``
    (``B×3×H×W`` in [0, 1], ``H = h·2^k``) brought to the map's grid by ``k`` stride-2 convolutions;
    zero at start (so it starts at ``g``)."""

    def __init__(self, channels: int, width: int = 64, blocks: int = 4, image_downsampling: int = 0, stem_width: int = 64) -> None:
        super().__init__()
        stem_channels = stem_width if image_downsampling else 0
        self.inp = nn.Conv2d(2 * channels + stem_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.GroupNorm(8, width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(width, width, 3, padding=1)) for _ in range(blocks))
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.stem: Optional[nn.Sequential] = None
        if image_downsampling:  # built last: a corrector without it starts from the same weights as before it existed
            layers: list = [nn.Conv2d(3, stem_width // 2, 3, padding=1), nn.GELU()]
            width_in = stem_width // 2
            for _ in range(image_downsampling):
                layers += [nn.Conv2d(width_in, stem_width, 3, stride=2, padding=1), nn.GELU()]
                width_in = stem_width
            self.stem = nn.Sequential(*layers)

    def forward(self, f_BChw: torch.Tensor, g_BChw: torch.Tensor, x_B3HW: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = [f_BChw, g_BChw]
        if self.stem is not None:
            if x_B3HW is None:
                raise ValueError("this corrector reads the image too: pass it")
            parts.append(self.stem(x_B3HW))
        h = self.inp(torch.cat(parts, 1))
        for block in self.blocks:
            h = h + block(h)
        return g_BChw + self.out(h)


def unit_images(images: torch.Tensor) -> torch.Tensor:
    """Images kept as 8-bit levels (``uint8``, to save memory) or floats, as floats in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def _image_batch(images_N3HW: Optional[torch.Tensor], idx: torch.Tensor) -> Optional[torch.Tensor]:
    """The images at ``idx`` as floats in [0, 1]."""
    return None if images_N3HW is None else unit_images(images_N3HW[idx])


def fit_corrector(f_NChw: torch.Tensor, g_NChw: torch.Tensor, f_hat_NChw: torch.Tensor, epochs: int, seed: int = 0,
                  batch_size: int = 256, lr: float = 2e-3, images_N3HW: Optional[torch.Tensor] = None,
                  progress: bool = False) -> Corrector:
    """A :class:`Corrector` fitted by AdamW (one-cycle schedule) to the mean squared error to ``f̂``;
    with ``images_N3HW`` (``uint8`` levels or floats in [0, 1]) one that reads the images too."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    downsampling = 0
    if images_N3HW is not None:
        ratio = images_N3HW.shape[-1] // f_NChw.shape[-1]
        if ratio < 1 or ratio & (ratio - 1) or ratio * f_NChw.shape[-1] != images_N3HW.shape[-1]:
            raise ValueError(f"images of side {images_N3HW.shape[-1]} are not a power of two times the maps' {f_NChw.shape[-1]}")
        downsampling = ratio.bit_length() - 1
    model = Corrector(f_NChw.shape[1], image_downsampling=downsampling)
    steps_per_epoch = max(1, len(f_NChw) // batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr / 2, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in tqdm(range(epochs), desc="corrector", disable=not progress):
        order = torch.randperm(len(f_NChw))
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            loss = (model(f_NChw[idx], g_NChw[idx], _image_batch(images_N3HW, idx)) - f_hat_NChw[idx]).pow(2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def corrected(model: Corrector, f_NChw: torch.Tensor, g_NChw: torch.Tensor, chunk: int = 512,
              images_N3HW: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The corrector's ``f̂`` estimate of every map (``images_N3HW``: for a corrector that reads them)."""
    out = []
    for start in range(0, len(f_NChw), chunk):
        idx = torch.arange(start, min(start + chunk, len(f_NChw)))
        out.append(model(f_NChw[idx], g_NChw[idx], _image_batch(images_N3HW, idx)))
    return torch.cat(out) if out else f_NChw.clone()
