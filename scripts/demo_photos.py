"""Natural photographs that ship inside installed packages, cut into training and held-out crops.

The demo zoo is trained only on photos bundled with scikit-image, scikit-learn and matplotlib
(no download). Eight colour photos are the *model photos*: class ``c`` of every demo model is
"a crop of photo ``c``". Three more are *reserved*: no model ever sees them; their crops are the
natural part of the ``outlier`` class.

Crops: a random square of side 25–100 % of the available shorter edge, resized to 64×64
(PIL bicubic; area-like antialiasing by an intermediate box reduction), flipped horizontally
with probability ½, all drawn from a seeded ``numpy`` generator. Model photos are split by
columns: training crops come from the left 75 % of the width, validation crops (tokenizer PSNR,
token NLL) from the right 25 %, so validation content is never trained on.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

__all__ = ["MODEL_PHOTOS", "RESERVED_PHOTOS", "load_photo", "random_crops", "crops_tensor"]

MODEL_PHOTOS: Tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "china", "flower", "grace_hopper")
RESERVED_PHOTOS: Tuple[str, ...] = ("hubble_deep_field", "immunohistochemistry", "retina")
TRAIN_FRACTION = 0.75


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """``H×W×3`` uint8 photo by name."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(f"{name}.jpg"))
    if name == "grace_hopper":
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            return np.asarray(Image.open(handle).convert("RGB"))
    import skimage.data as data

    if name == "motorcycle":
        return np.asarray(data.stereo_motorcycle()[0])
    return np.asarray(getattr(data, name)())[..., :3]


def _region(photo: np.ndarray, part: str, strip: Optional[Tuple[int, int]] = None) -> np.ndarray:
    width = photo.shape[1]
    cut = int(round(width * TRAIN_FRACTION))
    region = {"train": photo[:, :cut], "val": photo[:, cut:], "all": photo}[part]
    if strip is None:
        return region
    index, count = strip
    height = region.shape[0]
    return region[index * height // count:(index + 1) * height // count]


def _crop(region: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = region.shape[:2]
    short = min(h, w)
    side = int(rng.uniform(0.25, 1.0) * short)
    side = max(side, min(size, short))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    img = Image.fromarray(region[top:top + side, left:left + side])
    if side >= 2 * size:
        img = img.reduce(side // size)
    img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img)
    return arr[:, ::-1] if rng.random() < 0.5 else arr


def random_crops(photos: Tuple[str, ...], n: int, seed: int, part: str = "train", size: int = 64,
                 strip: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` crops (``n×size×size×3`` uint8) cycling over ``photos``, with their photo indices.

    ``strip=(i, k)`` crops only within the ``i``-th of ``k`` equal strips of rows of ``part``:
    crops of different strips share no pixel (the demo Dataset's splits use it)."""
    rng = np.random.default_rng(seed)
    regions: Dict[str, np.ndarray] = {p: _region(load_photo(p), part, strip) for p in photos}
    labels = rng.permutation(np.arange(n) % len(photos))
    crops = [_crop(regions[photos[c]], rng, size) for c in labels]
    return (np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)), labels


def crops_tensor(crops: np.ndarray):
    """uint8 ``N×H×W×3`` → float ``N×3×H×W`` in ``[0, 1]``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div(255)
