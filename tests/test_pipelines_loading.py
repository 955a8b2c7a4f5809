"""Images, masks and prompt embeddings for Part A (SPEC A1.7.1, issue 4 "Loading")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffaccel.pipelines.loading import load_image, load_mask, load_prompt_embeds, save_prompt_embeds


def test_load_image_center_crop_resize(tmp_path):
    arr = np.zeros((50, 80, 3), np.uint8)
    arr[:, 15:65] = 255  # the central 50x50 square is white, the side bars black
    Image.fromarray(arr).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))  # the crop took the centre only
    y = load_image(tmp_path / "wide.png", (16, 32), value_range=(0, 1), channels=1)
    assert y.shape == (1, 1, 16, 32) and 0 <= y.min() and y.max() <= 1
    assert y[..., 0].max() == 0  # a 2:1 crop keeps the black bars


def test_load_image_drawing_with_alpha(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)  # fully transparent -> white background
    rgba[10:18, 10:18] = (0, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "drawing.png")
    x = load_image(tmp_path / "drawing.png", 28, value_range=(0, 1), channels=1)
    assert x[0, 0, 0, 0] == 1 and x[0, 0, 14, 14] == 0
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="channels"):
        load_image(tmp_path / "drawing.png", channels=2)


def test_load_mask(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[:, 16:] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    a = load_mask(tmp_path / "mask.png", 16)
    b = load_mask(m, 16)
    c = load_mask(torch.from_numpy(m[None, None] > 0), 16)
    for x in (a, b, c):
        assert x.shape == (1, 1, 16, 16) and set(x.unique().tolist()) == {0.0, 1.0}
        assert x[..., :, :8].sum() == 0 and x[..., :, 8:].min() == 1
    with pytest.raises(ValueError, match="2-D"):
        load_mask(np.zeros((2, 3, 8, 8)), 8)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_prompt_embeds_roundtrip(tmp_path, suffix):
    d = {"": torch.randn(1, 77, 8), "a dog": torch.randn(1, 77, 8)}
    save_prompt_embeds(d, tmp_path / f"e{suffix}")
    e = load_prompt_embeds(tmp_path / f"e{suffix}")
    assert set(e) == set(d) and all(torch.equal(e[k], d[k]) for k in d)


def test_prompt_embeds_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_prompt_embeds(tmp_path / "nope.pth")
    torch.save({"a": torch.zeros(3, dtype=torch.long)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="'a'"):
        load_prompt_embeds(tmp_path / "bad.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="dict"):
        load_prompt_embeds(tmp_path / "list.pth")
