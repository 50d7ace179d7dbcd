"""Attacks keep shape and range, are identities at neutral strength, are seeded, and get
stronger with strength; the curriculum maps epochs to stages and augments the right share."""
from __future__ import annotations

import pytest
import torch

import augmentation as aug


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)
    return (0.2 + 0.6 * smooth + 0.05 * torch.rand(4, 3, 32, 32, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("name", list(aug.ATTACK_DEFAULTS))
def test_attack_shape_range_and_effect(images, name):
    out = aug.apply_attack(images, name, aug.ATTACK_DEFAULTS[name], torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 1e-3, f"{name} at the paper's strength left the images unchanged"


@pytest.mark.parametrize("name,neutral", [("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("resize", 1.0),
                                          ("noise", 0.0), ("blur", 1)])
def test_neutral_strength_is_identity(images, name, neutral):
    assert torch.allclose(aug.apply_attack(images, name, neutral, torch.Generator().manual_seed(0)), images, atol=1e-6)


@pytest.mark.parametrize("name,strength,message", [
    ("resize", 5, "down-scale factor"), ("resize", 0, "down-scale factor"), ("jpeg", 120, "from 0 to 100"),
    ("jpeg", 60.5, "whole number"), ("blur", 3.5, "whole number"), ("noise", -0.1, "from 0"), ("brightness", -1, "from 0"),
])
def test_a_strength_the_attack_cannot_take_is_refused(images, name, strength, message):
    """Each was once taken as something else: an up-scale for "resize 5", PIL's 100 for quality 120, a blur of 3 for 3.5."""
    with pytest.raises(ValueError, match=message):
        aug.apply_attack(images, name, strength)


def test_every_listed_strength_is_one_the_attack_takes():
    listed = list(aug.ATTACK_DEFAULTS.items())
    listed += [(name, value) for table in (aug.ATTACK_SWEEPS, *aug.CURRICULUM.values())
               for name, values in table.items() for value in values]
    for name, value in listed:
        aug.check_strength(name, value)


def test_jpeg_error_grows_as_quality_drops(images):
    errors = [(aug.jpeg(images, q) - images).abs().mean().item() for q in (95, 75, 40, 10)]
    assert errors == sorted(errors)


def test_blur_removes_high_frequencies(images):
    def detail(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean().item()

    assert detail(aug.gaussian_blur(images, 9, torch.Generator().manual_seed(0), sigma_range=(2.0, 2.0))) < 0.5 * detail(images)
    with pytest.raises(ValueError, match="odd"):
        aug.gaussian_blur(images, 4)


def test_colour_attacks_follow_their_definitions(images):
    grey = aug._greyscale(images)
    assert torch.allclose(aug.saturation(images, 0.0), grey.expand_as(images), atol=1e-6)
    flat = aug.contrast(images, 0.0)
    assert torch.allclose(flat, grey.mean(dim=(1, 2, 3), keepdim=True).expand_as(images), atol=1e-6)
    assert torch.allclose(aug.brightness(images, 0.5), images * 0.5)


def test_random_attacks_are_seeded(images):
    for name in ("noise", "blur"):
        a = aug.apply_attack(images, name, aug.ATTACK_DEFAULTS[name], torch.Generator().manual_seed(3))
        b = aug.apply_attack(images, name, aug.ATTACK_DEFAULTS[name], torch.Generator().manual_seed(3))
        c = aug.apply_attack(images, name, aug.ATTACK_DEFAULTS[name], torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_attack_names_choices(images):
    with pytest.raises(KeyError, match="jpeg"):
        aug.apply_attack(images, "sharpen", 1.0)


def test_curriculum_stage_by_epoch():
    schedule = [["none", 1], ["weak", 1], ["medium", 2], ["strong", 2]]
    assert [aug.curriculum_stage(e, schedule) for e in range(8)] == ["none", "weak", "medium", "medium", "strong", "strong",
                                                                     "strong", "strong"]
    with pytest.raises(KeyError, match="unknown curriculum stage"):
        aug.curriculum_stage(0, [["extreme", 1]])


def test_curriculum_strengths_grow():
    """Each stage after ``weak`` has the same attacks, and each attack's range of strengths moves
    up (down for JPEG quality and the resize factor, where lower is stronger): its weakest and its
    strongest no weaker than the stage before's, its mean stronger. Neighbouring stages may share a
    value at their boundary (noise 0.03 and 0.04 are both medium and strong)."""
    stages = ["weak", "medium", "strong"]
    for earlier, later in zip(stages, stages[1:]):
        assert set(aug.CURRICULUM[later]) == set(aug.CURRICULUM[earlier])
        for name in aug.CURRICULUM[earlier]:
            sign = -1 if name in ("jpeg", "resize") else 1
            before = [sign * v for v in aug.CURRICULUM[earlier][name]]
            after = [sign * v for v in aug.CURRICULUM[later][name]]
            assert min(after) >= min(before) and max(after) >= max(before), (earlier, later, name)
            assert sum(after) / len(after) > sum(before) / len(before), (earlier, later, name)


def test_augment_batch_share_and_determinism():
    imgs = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    assert torch.equal(aug.augment_batch(imgs, "none", 1.0), imgs)
    assert torch.equal(aug.augment_batch(imgs, "strong", 0.0, torch.Generator().manual_seed(0)), imgs)
    out = aug.augment_batch(imgs, "strong", 0.5, torch.Generator().manual_seed(0))
    changed = ((out - imgs).abs().flatten(1).amax(1) > 1e-6).float().mean().item()
    assert 0.35 < changed < 0.65
    assert torch.equal(out, aug.augment_batch(imgs, "strong", 0.5, torch.Generator().manual_seed(0)))


def test_uint8_levels_are_what_a_png_file_stores(tmp_path):
    """``to_uint8``: clamped, ×255, rounded half to even; a PNG written from ``to_uint8_arrays`` reads
    back as the same levels, and ``inv_decoder.to_png_levels`` is the same levels over 255."""
    import numpy as np
    from PIL import Image

    from inv_decoder import to_png_levels

    x = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 2.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert aug.to_uint8(x)[0, 0, 0].tolist() == [0, 0, 0, 2, 128, 255, 255]
    assert aug.to_uint8(x).dtype == torch.uint8 and aug.to_uint8(x).shape == x.shape
    arrays = aug.to_uint8_arrays(x.requires_grad_())
    assert arrays.shape == (1, 1, 7, 3) and arrays.dtype == np.uint8
    Image.fromarray(arrays[0]).save(tmp_path / "x.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), arrays[0])
    assert torch.equal(to_png_levels(x.detach()), aug.to_uint8(x).float() / 255)
