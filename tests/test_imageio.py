"""diffaccel.imageio: one value-range convention, one upscaling rule, grids, PNG, GIF, frame recording."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffaccel import imageio as io
from diffaccel.errors import ArgumentError, ArgumentTypeError


def test_grid_and_nearest_upscale():
    x = torch.rand(5, 1, 28, 28)
    arr = io.to_uint8(x, nrow=3, pad=1, scale=2)
    assert arr.shape == (2 * (2 * 28 + 1), 2 * (3 * 28 + 2))
    # nearest neighbour: every 2x2 block is one model pixel
    assert (arr[0::2, 0::2] == arr[1::2, 1::2]).all()
    assert arr[0, 0] == round(float(x[0, 0, 0, 0]) * 255)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        io.to_uint8(torch.rand(2, 2, 4, 4))


def test_value_range_is_an_affine_map_with_clamping_and_nan_as_low():
    x01 = torch.rand(4, 3, 9, 7)
    x01[0, 0, 0, 0] = 0.0
    x01[0, 0, 0, 1] = 1.0
    ref = io.to_uint8(x01, nrow=2, pad=1)
    # the same picture from [-1, 1] and from an arbitrary range
    assert np.array_equal(io.to_uint8(x01 * 2 - 1, (-1, 1), nrow=2, pad=1), ref)
    got = io.to_uint8(x01 * 4 + 3, (3, 7), nrow=2, pad=1)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # float rounding of the affine map only
    assert ref[0, 0, 0] == 0 and ref[0, 1, 0] == 255
    y = torch.tensor([[[[-5.0, 5.0, float("nan"), 0.5]]]])
    assert io.to_uint8(y, (-1, 1)).tolist() == [[0, 255, 0, 191]]
    # pad_value is in the image's range; default: the top (white)
    g = io.to_uint8(torch.zeros(2, 1, 2, 2), (-1, 1), nrow=2, pad=1)
    assert g[:, 2].tolist() == [255, 255] and g[0, 0] == 128
    g = io.to_uint8(torch.zeros(3, 1, 2, 2), (-1, 1), nrow=2, pad=0, pad_value=-1)
    assert (g[2:, 2:] == 0).all()  # the unused cell
    with pytest.raises(ArgumentError, match="value_range"):
        io.to_uint8(x01, (1, 1))
    with pytest.raises(ArgumentTypeError, match="value_range"):
        io.to_uint8(x01, "01")
    with pytest.raises(ArgumentTypeError, match="x must be a torch.Tensor"):
        io.to_uint8(x01.numpy())


def test_one_upscaling_rule():
    assert [io.display_scale(s) for s in (16, 28, 32, 64, 100, 256, 1024)] == [8, 4, 4, 2, 1, 1, 1]
    assert io.display_scale(256, 256) == 1 and io.display_scale(64, 256) == 4
    with pytest.raises(ArgumentError, match="size"):
        io.display_scale(0)


def test_save_png_sizes_modes_and_determinism(tmp_path):
    x = torch.rand(20, 1, 28, 28)
    p = io.save_png(x, tmp_path / "a" / "grid.png", nrow=10)
    with Image.open(p) as im:
        assert im.size == (10 * 28 * 4, 2 * 28 * 4) and im.mode == "L"  # auto scale from one 28-px image
    p2 = io.save_png(x, tmp_path / "grid2.png", nrow=10)
    assert p.read_bytes() == p2.read_bytes()  # no timestamps
    rgb = torch.rand(3, 64, 48) * 2 - 1
    with Image.open(io.save_png(rgb, tmp_path / "rgb.png", value_range=(-1, 1))) as im:
        assert im.size == (48 * 2, 64 * 2) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im)[::2, ::2], io.to_uint8(rgb, (-1, 1)))
    with Image.open(io.save_png(rgb, tmp_path / "rgb1.png", value_range=(-1, 1), scale=1)) as im:
        assert im.size == (48, 64)


def test_save_gif_frames_and_timing(tmp_path):
    frames = [torch.full((2, 1, 8, 8), v) for v in (0.0, 0.5, 1.0)]
    p = io.save_gif(frames, tmp_path / "g" / "run.gif", scale=2, duration_ms=50, hold_last_ms=700)
    with Image.open(p) as im:
        assert im.n_frames == 3 and im.size == (2 * 8 * 2, 8 * 2)
        seen = []
        for k in range(im.n_frames):
            im.seek(k)
            seen.append((int(np.asarray(im.convert("L"))[0, 0]), im.info["duration"]))
    assert seen == [(0, 50), (128, 50), (255, 700)]
    with pytest.raises(ValueError, match="at least one frame"):
        io.save_gif([], tmp_path / "x.gif")
    with pytest.raises(ArgumentError, match="same size"):
        io.save_gif([torch.zeros(1, 8, 8), torch.zeros(1, 9, 9)], tmp_path / "y.gif", scale=1)


def test_frame_recorder_spacing_batches_and_transform():
    rec = io.FrameRecorder.spaced(11, max_frames=4)  # every 3rd step and the last
    for i in range(11):
        for batch in (0, 1):  # two batches per step, as a batched sampler calls back
            rec({"i": i, "x": torch.full((2, 1, 2, 2), i / 10 + batch)})
    fr = rec.frames
    assert len(fr) == 5 and all(f.shape == (4, 1, 2, 2) for f in fr)
    assert [round(float(f[0, 0, 0, 0]), 4) for f in fr] == [0.0, 0.3, 0.6, 0.9, 1.0]
    assert float(fr[-1].max()) == 1.0  # clamped to the default value_range (0, 1)
    rec = io.FrameRecorder(lambda x: x * 2 - 1, key="x0_hat", every=2, value_range=(-1, 1))
    for i in range(5):
        rec({"i": i, "x": torch.zeros(1, 1, 2, 2), "x0_hat": torch.full((1, 1, 2, 2), 0.75)})
    assert len(rec.frames) == 3 and float(rec.frames[0][0, 0, 0, 0]) == 0.5
    with pytest.raises(ArgumentError, match="every"):
        io.FrameRecorder(every=0)
