"""Post-processing attacks and the augmentation curriculum of inverse-decoder fine-tuning.

A provenance signal must survive what happens to images after generation: re-compression,
resizing, colour edits. The paper measures seven such *attacks* (its Table 2) and makes the
inverse decoder robust by fine-tuning it on attacked generations with a curriculum that grows
the attack strength by epoch (its Table A2): ``none → weak → medium → strong``.

Every attack maps a float batch ``B×3×H×W`` in ``[0, 1]`` to one of the same shape and range:

============  =====================================================  ==============
attack        what it does (strength = …)                            paper strength
============  =====================================================  ==============
noise         add Gaussian noise (standard deviation)                0.05
blur          Gaussian blur (odd kernel size; σ ~ U(0.1, 2) per img)  9
jpeg          JPEG round trip through PIL (quality)                  60
brightness    multiply by the factor                                 1.6
contrast      blend with the mean grey level (factor)                2.0
saturation    blend with the greyscale image (factor)                2.0
resize        antialiased down-scale by the factor and back up       0.5
============  =====================================================  ==============

Brightness, contrast and saturation follow the usual image-library definitions (factor 1 is
the identity). All randomness comes from the ``torch.Generator`` passed in, so a seed fixes the
result.

    python augmentation.py IMAGE.png --attack jpeg --strength 60 --out attacked.png
"""
from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ATTACKS", "ATTACK_DEFAULTS", "ATTACK_SWEEPS", "CURRICULUM", "DEFAULT_SCHEDULE", "STRENGTH_RANGES", "apply_attack", "check_strength",
           "curriculum_stage", "augment_batch", "gaussian_noise", "gaussian_blur", "jpeg", "brightness", "contrast",
           "saturation", "resize", "to_uint8", "to_uint8_arrays"]

_LUMA = (0.299, 0.587, 0.114)


def to_uint8(img01: torch.Tensor) -> torch.Tensor:
    """Images in ``[0, 1]`` as the 8-bit levels a PNG file stores: clamped to ``[0, 1]``, times 255,
    rounded (half to even) and cast to ``uint8``; same shape and device. The one home of this
    conversion: the demo Dataset's files, the JPEG attack and the checks that compare images by
    their pixels all use it, so they agree bit for bit."""
    return (img01.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def to_uint8_arrays(img01_B3HW: torch.Tensor) -> np.ndarray:
    """:func:`to_uint8` of a batch as ``B×H×W×3`` arrays on the CPU, as PIL writes them."""
    return to_uint8(img01_B3HW).permute(0, 2, 3, 1).cpu().numpy()


def _greyscale(img_B3HW: torch.Tensor) -> torch.Tensor:
    weights = img_B3HW.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (img_B3HW * weights).sum(1, keepdim=True)


def gaussian_noise(img_B3HW: torch.Tensor, std: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    noise = torch.randn(img_B3HW.shape, generator=generator, dtype=img_B3HW.dtype).to(img_B3HW.device)
    return (img_B3HW + std * noise).clamp(0, 1)


def _blur_one(img_13HW: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=img_13HW.dtype, device=img_13HW.device)
    k1d = torch.exp(-0.5 * (x / sigma) ** 2)
    k1d = k1d / k1d.sum()
    pad = kernel_size // 2
    out = F.pad(img_13HW, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, k1d.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(out, k1d.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def gaussian_blur(img_B3HW: torch.Tensor, kernel_size: int, generator: Optional[torch.Generator] = None,
                  sigma_range: Sequence[float] = (0.1, 2.0)) -> torch.Tensor:
    """Blur with an odd ``kernel_size``; σ is drawn per image from ``sigma_range``."""
    check_strength("blur", kernel_size)
    kernel_size = int(kernel_size)
    if kernel_size == 1:
        return img_B3HW.clone()
    if kernel_size // 2 >= min(img_B3HW.shape[-2:]):  # the reflection padding needs less than the image's side
        raise ValueError(f"blur kernel size {kernel_size} is too large for a {img_B3HW.shape[-2]}×{img_B3HW.shape[-1]} "
                         f"image: at most {2 * min(img_B3HW.shape[-2:]) - 1}")
    lo, hi = sigma_range
    sigmas = lo + (hi - lo) * torch.rand(len(img_B3HW), generator=generator)
    return torch.cat([_blur_one(img_B3HW[i:i + 1], kernel_size, float(s)) for i, s in enumerate(sigmas)]).clamp(0, 1)


def jpeg(img_B3HW: torch.Tensor, quality: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """JPEG round trip at ``quality`` (PIL, 4:2:0 chroma subsampling, its default)."""
    from PIL import Image

    arr = to_uint8_arrays(img_B3HW)
    out = []
    for a in arr:
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(img_B3HW.device, img_B3HW.dtype) / 255


def brightness(img_B3HW: torch.Tensor, factor: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return (img_B3HW * factor).clamp(0, 1)


def contrast(img_B3HW: torch.Tensor, factor: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    mean = _greyscale(img_B3HW).mean(dim=(1, 2, 3), keepdim=True)
    return (mean + factor * (img_B3HW - mean)).clamp(0, 1)


def saturation(img_B3HW: torch.Tensor, factor: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    grey = _greyscale(img_B3HW)
    return (grey + factor * (img_B3HW - grey)).clamp(0, 1)


def resize(img_B3HW: torch.Tensor, factor: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Down-scale by ``factor`` (bilinear, antialiased) and back to the original size."""
    if factor == 1:
        return img_B3HW.clone()
    H, W = img_B3HW.shape[-2:]
    small = F.interpolate(img_B3HW, size=(max(1, round(H * factor)), max(1, round(W * factor))), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False).clamp(0, 1)


ATTACKS: Dict[str, Callable[..., torch.Tensor]] = {
    "noise": gaussian_noise, "blur": gaussian_blur, "jpeg": jpeg, "brightness": brightness,
    "contrast": contrast, "saturation": saturation, "resize": resize,
}
ATTACK_DEFAULTS: Dict[str, float] = {"noise": 0.05, "blur": 9, "jpeg": 60, "brightness": 1.6, "contrast": 2.0,
                                     "saturation": 2.0, "resize": 0.5}
ATTACK_SWEEPS: Dict[str, List[float]] = {
    "noise": [0.01, 0.02, 0.05, 0.1], "blur": [3, 5, 9, 15], "jpeg": [90, 75, 60, 40], "brightness": [1.2, 1.6, 2.0],
    "contrast": [1.5, 2.0, 3.0], "saturation": [1.5, 2.0, 3.0], "resize": [0.75, 0.5, 0.25],
}
# The paper's Table A2: strengths a fine-tuning batch may draw at each curriculum stage.
CURRICULUM: Dict[str, Dict[str, List[float]]] = {
    "none": {},
    "weak": {"jpeg": [90, 85, 80], "blur": [1, 3], "noise": [0.005, 0.01, 0.02], "brightness": [1.0, 1.1, 1.2],
             "saturation": [1.0, 1.2, 1.5], "resize": [0.9, 0.85, 0.8], "contrast": [1.0, 1.2, 1.5]},
    "medium": {"jpeg": [80, 75, 70, 65], "blur": [3, 5], "noise": [0.02, 0.03, 0.04], "brightness": [1.3, 1.4, 1.5],
               "saturation": [1.5, 1.7, 2.0], "resize": [0.8, 0.75, 0.7], "contrast": [1.5, 1.7, 2.0]},
    "strong": {"jpeg": [60, 55, 50], "blur": [5, 7, 9], "noise": [0.03, 0.04, 0.05], "brightness": [1.5, 1.7, 2.0],
               "saturation": [2.0, 2.2, 2.5], "resize": [0.7, 0.6, 0.5], "contrast": [2.0, 2.2, 2.4]},
}
DEFAULT_SCHEDULE: List[List] = [["none", 1], ["weak", 1], ["medium", 2], ["strong", 2]]


# The strengths each attack takes: (lowest, highest, whole numbers only); a resize must also be
# above 0 and a blur kernel odd (check_strength). Outside them an attack would fail, do nothing or
# something else than its name says (a "resize" by 5 is an up-scale, a JPEG quality of 120 is
# PIL's 100, a blur of 3.5 a blur of 3).
STRENGTH_RANGES: Dict[str, tuple] = {
    "noise": (0.0, float("inf"), False), "blur": (1, float("inf"), True), "jpeg": (0, 100, True),
    "brightness": (0.0, float("inf"), False), "contrast": (0.0, float("inf"), False),
    "saturation": (0.0, float("inf"), False), "resize": (0.0, 1.0, False),
}


def check_strength(name: str, strength: float) -> None:
    """A ``ValueError`` saying why, unless attack ``name`` can take ``strength`` (:data:`STRENGTH_RANGES`)."""
    lowest, highest, whole = STRENGTH_RANGES[name]
    if not math.isfinite(strength):
        raise ValueError(f"{name} takes a finite strength, got {strength:g}")
    if whole and float(strength) != int(strength):
        raise ValueError(f"{name} takes a whole number, got {strength:g}")
    if name == "resize" and not 0 < strength <= 1:
        raise ValueError(f"resize takes a down-scale factor in (0, 1], got {strength:g}")
    if name == "blur" and int(strength) % 2 == 0:
        raise ValueError(f"blur kernel size must be odd, got {strength:g}")
    if not lowest <= strength <= highest:
        raise ValueError(f"{name} takes a strength from {lowest:g} to {highest:g}, got {strength:g}")


def apply_attack(img_B3HW: torch.Tensor, name: str, strength: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Attack ``name`` at ``strength`` (checked by :func:`check_strength`) on a ``[0, 1]`` batch;
    ``name='none'`` returns a copy."""
    if name == "none":
        return img_B3HW.clone()
    if name not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; choose from none, {', '.join(ATTACKS)}")
    check_strength(name, strength)
    return ATTACKS[name](img_B3HW, strength, generator=generator)


def curriculum_stage(epoch: int, schedule: Sequence[Sequence] = DEFAULT_SCHEDULE) -> str:
    """Stage of 0-based ``epoch`` for ``schedule`` = [[stage, epochs], …]; the last stage holds after."""
    if not schedule:
        raise ValueError("empty curriculum schedule")
    end = 0
    for stage, epochs in schedule:
        if stage not in CURRICULUM:
            raise KeyError(f"unknown curriculum stage {stage!r}; choose from {', '.join(CURRICULUM)}")
        end += int(epochs)
        if epoch < end:
            return stage
    return schedule[-1][0]


def augment_batch(img_B3HW: torch.Tensor, stage: str, p: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each image, with probability ``p``, gets one attack of ``stage`` drawn uniformly, at a
    strength drawn uniformly from the stage's list; the others pass unchanged."""
    table = CURRICULUM[stage]
    out = img_B3HW.clone()
    if not table:
        return out
    names = sorted(table)
    B = len(img_B3HW)
    chosen = torch.rand(B, generator=generator) < p
    attack_idx = torch.randint(0, len(names), (B,), generator=generator)
    strength_u = torch.rand(B, generator=generator)
    for i in chosen.nonzero().flatten().tolist():
        name = names[int(attack_idx[i])]
        options = table[name]
        strength = options[min(int(strength_u[i] * len(options)), len(options) - 1)]
        out[i:i + 1] = apply_attack(img_B3HW[i:i + 1], name, strength, generator)
    return out


def main(argv: Optional[list] = None) -> int:
    from atomic import atomic_path
    from cli import output_file_with

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="the image to attack")
    parser.add_argument("--attack", required=True, choices=["none", *ATTACKS], help="the post-processing attack to apply")
    parser.add_argument("--strength", type=float, help="default: the paper's strength for the attack")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack's randomness (default 0)")
    parser.add_argument("--out", type=output_file_with(".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"), required=True,
                        help="where to write the attacked image (.png, .jpg, …; its folder is made if missing)")
    args = parser.parse_args(argv)
    if args.attack == "none" and args.strength is not None:
        parser.error("--strength: the attack none takes no strength; leave it out or choose an attack")
    strength = args.strength if args.strength is not None else ATTACK_DEFAULTS.get(args.attack, 0)
    if args.attack != "none":
        try:
            check_strength(args.attack, strength)
        except ValueError as err:  # before the image is read
            parser.error(f"--strength {strength:g} for {args.attack}: {err}")
    from PIL import Image

    from dataset import rgb_image

    try:
        with Image.open(args.image) as opened:
            img = np.asarray(rgb_image(opened))
    except OSError as err:
        parser.error(f"cannot read {args.image}: {err}")
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    try:
        y = apply_attack(x, args.attack, strength, torch.Generator().manual_seed(args.seed))
    except ValueError as err:  # a strength this image cannot take (a blur kernel wider than it)
        parser.error(f"--strength {strength:g} for {args.attack}: {err}")
    with atomic_path(args.out) as tmp:
        Image.fromarray(to_uint8_arrays(y)[0]).save(tmp, format=Image.registered_extensions()[args.out.suffix.lower()])
    print(f"{args.out}: {args.attack} at {strength}")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("augmentation"))
