"""Images, masks and prompt embeddings for Part A (SPEC A1.7.1, issue 4 "Loading")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffaccel.errors import FileFormatError
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


# ----------------------------------------------------------------------------- every mode, limits
def _gradient(h=24, w=32):
    return np.linspace(0.0, 1.0, h * w).reshape(h, w)


def _load_native(path, h=24, w=32, channels=1):
    return load_image(path, (h, w), value_range=(0, 1), channels=channels)[0]


def test_16_bit_png_keeps_its_range(tmp_path):
    g = _gradient()
    Image.fromarray((g * 65535).round().astype(np.uint16)).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    x = _load_native(tmp_path / "16.png")
    torch.testing.assert_close(x[0], torch.from_numpy(g).float(), atol=1e-4, rtol=0)
    assert x.max() == 1 and x.min() == 0 and 0.45 < x.mean() < 0.55  # not saturated


def test_32_bit_int_tiff_by_its_bit_depth(tmp_path):
    g = _gradient()
    Image.fromarray((g * (2**31 - 1)).round().astype(np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    torch.testing.assert_close(_load_native(tmp_path / "i.tif")[0], torch.from_numpy(g).float(), atol=1e-6, rtol=0)
    Image.fromarray(np.full((8, 8), -5, np.int32)).save(tmp_path / "neg.tif")
    with pytest.raises(FileFormatError, match="negative pixel values"):
        load_image(tmp_path / "neg.tif", 8)


def test_float_tiff_in_unit_range_or_refused(tmp_path):
    g = _gradient().astype(np.float32)
    Image.fromarray(g).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    x = _load_native(tmp_path / "f.tif", channels=3)
    assert x.shape == (3, 24, 32)
    torch.testing.assert_close(x, torch.from_numpy(g).expand(3, -1, -1), atol=1e-6, rtol=0)
    Image.fromarray(g * 255).save(tmp_path / "f255.tif")
    with pytest.raises(FileFormatError, match=r"float image must hold values in \[0, 1\]"):
        load_image(tmp_path / "f255.tif", 8)
    g[0, 0] = np.nan
    with pytest.raises(FileFormatError, match="NaN"):
        load_image(g, 8)


def test_palette_cmyk_and_one_bit(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (255, 0, 0)
    rgb[:, 8:] = (0, 0, 255)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    x = _load_native(tmp_path / "p.png", 16, 16, channels=3)
    torch.testing.assert_close(x, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, atol=1e-6, rtol=0)

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure cyan ink off, M+Y: red
    x = _load_native(tmp_path / "cmyk.jpg", 8, 8, channels=3)
    assert x[0].min() > 0.9 and x[1].max() < 0.1 and x[2].max() < 0.1

    bits = np.indices((8, 8)).sum(0) % 2 == 0
    Image.fromarray(bits).save(tmp_path / "1.png")
    assert Image.open(tmp_path / "1.png").mode == "1"
    assert torch.equal(_load_native(tmp_path / "1.png", 8, 8)[0], torch.from_numpy(bits).float())


def test_la_and_rgba_composite_on_white(tmp_path):
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 1] = 255
    la[:4, :, 1] = 0  # top half transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    x = _load_native(tmp_path / "la.png", 8, 8)[0]
    assert (x[:4] == 1).all() and (x[4:] == 0).all()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128  # half-transparent black: mid gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = _load_native(tmp_path / "rgba.png", 8, 8, channels=3)
    assert torch.allclose(x, torch.full_like(x, 127 / 255), atol=1 / 255)


def test_unreadable_images_are_clear_errors(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(FileFormatError, match="not an image file"):
        load_image(tmp_path / "text.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    with pytest.raises(FileFormatError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(FileFormatError, match=r"pixels of type int64 have no defined intensity range"):
        load_image(np.zeros((8, 8), np.int64), 8)
    with pytest.raises(FileFormatError, match="is 64x64 but the model works at 32x32"):
        load_image(tmp_path / "ok.png", 32, resize=False)
    assert load_image(tmp_path / "ok.png", 64, resize=False).shape == (1, 3, 64, 64)


def _png_claiming(path, width, height):
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb's header)."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(raw))


def test_huge_images_are_refused_before_decoding(tmp_path):
    _png_claiming(tmp_path / "bomb.png", 40000, 40000)  # Pillow's DecompressionBombError
    with pytest.raises(FileFormatError, match="too many pixels"):
        load_image(tmp_path / "bomb.png", 28)
    _png_claiming(tmp_path / "big.png", 10000, 10000)  # under Pillow's error, over our limit
    with pytest.raises(FileFormatError, match=r"10000x10000 = 100000000 pixels, more than the 67108864"):
        load_image(tmp_path / "big.png", 28)
    Image.new("L", (600, 500)).save(tmp_path / "600.png")
    with pytest.raises(FileFormatError, match="more than the 100000"):
        load_image(tmp_path / "600.png", 28, max_pixels=100_000)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_large_images_are_downscaled_while_loading(tmp_path, fmt):
    import tracemalloc

    import torch.nn.functional as nnf

    h, w = 2000, 3000
    g = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 1, w)) / 2
    Image.fromarray((g * 255).round().astype(np.uint8)).save(tmp_path / f"big.{fmt}")
    tracemalloc.start()
    try:
        x = load_image(tmp_path / f"big.{fmt}", 28, value_range=(0, 1), channels=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # never a float copy of the 6 MP image (24 MB)
    full = torch.from_numpy(g).float()[None, None, :, 500:2500]  # the centre 2000x2000, directly
    ref = nnf.interpolate(full, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(x, ref, atol=0.02, rtol=0)


def test_no_resize_reports_the_files_own_size(tmp_path):
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(FileFormatError, match="is 256x256 but the model works at 64x64"):
        load_image(tmp_path / "a.jpg", 64, resize=False)
