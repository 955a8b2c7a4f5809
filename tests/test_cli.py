"""The ``diffaccel`` command line, in process, on tiny stand-in weights built here (no shipped weights needed).

MNIST models are random-init UNets (D = 4) written in the shipped-weights layout
(``NAME.safetensors`` + ``NAME.json``) into a temporary ``WEIGHTS_DIR``; the IF model is a tiny
random ``UNet2DConditionModel`` saved with ``save_pretrained`` plus an embeddings file. Outputs
are checked for existence, format and shape; errors for exit status 2 and a message naming
the problem.
"""
from __future__ import annotations

import json
import sys
import types
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffaccel import cli
from diffaccel.mnist import pretrained
from diffaccel.mnist.models import UNet
from diffaccel.mnist.train import TrainConfig

STEPS = ["--num-steps", "3"]  # Part A techniques: 3 diffusers-style timesteps (+ the final -1)


def _write_mnist_model(root: Path, name: str, **cfg) -> None:
    tc = TrainConfig(hidden=4, **cfg)
    torch.manual_seed(len(name))
    model = UNet(tc.model_config())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / f"{name}.safetensors"))
    meta = {"train_config": asdict(tc), "model_config": tc.model_config().to_dict(), "info": {}}
    (root / f"{name}.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    _write_mnist_model(root, "tiny_class", task="ddpm", conditioning="class")
    _write_mnist_model(root, "tiny_time", task="ddpm", conditioning="time")
    _write_mnist_model(root, "tiny_flow", task="flow", conditioning="class")
    _write_mnist_model(root, "tiny_denoiser", task="denoiser")
    from diffaccel.mnist.classifier import DigitClassifier

    torch.manual_seed(0)
    save_file(DigitClassifier().state_dict(), str(root / "classifier.safetensors"))
    (root / "classifier.json").write_text(json.dumps({"test_accuracy": 0.1234}))
    return root


@pytest.fixture(autouse=True)
def _use_weights(weights_dir, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights_dir)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "digit.png"
    a = torch.zeros(40, 30, dtype=torch.uint8)
    a[8:32, 12:18] = 255  # a "1", not 28x28: the CLI center-crops and resizes
    Image.fromarray(a.numpy()).save(p)
    return p


def run(*argv, code=0, capsys=None):
    rc = cli.main([str(a) for a in argv])
    assert rc == code, f"diffaccel {' '.join(map(str, argv))} exited with {rc}, expected {code}"


def error_of(capsys, *argv) -> str:
    capsys.readouterr()
    run(*argv, code=2)
    err = capsys.readouterr().err
    assert "error:" in err
    return err


def png(path: Path) -> Image.Image:
    assert path.is_file(), f"{path} was not written"
    im = Image.open(path)
    im.load()
    return im


# ----------------------------------------------------------------------------- help
HELP = [["--help"], ["mnist", "--help"], ["demo", "--help"]] + [
    ["mnist", c, "--help"] for c in ("train", "train-classifier", "sample", "eval", "figures", "list")] + [
    [c, "--help"] for c in ("forward", "blur-denoise", "one-step", "iterative", "sample", "cfg", "sdedit", "img2img",
                            "inpaint", "anagram", "hybrid", "upsample")]


@pytest.mark.parametrize("argv", HELP, ids=lambda a: " ".join(a[:-1]) or "top")
def test_help(argv, capsys):
    run(*argv)
    out = capsys.readouterr().out
    assert out.startswith("usage: diffaccel")
    assert "-h, --help" in out
    if argv[0] not in ("--help", "mnist", "demo"):  # every Part A technique
        assert "--model" in out and "--out DIR" in out and "--seed" in out


def test_usage_error_exits_2(capsys):
    run("mnist", "sample", "--model", "tiny_class", code=2)  # --out missing
    assert "--out" in capsys.readouterr().err
    run("no-such-command", code=2)


# ----------------------------------------------------------------------------- mnist sample
def test_mnist_sample_safetensors_png_npz_gif(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    run("mnist", "sample", "--model", "tiny_class", "--labels", "3", "7", "--n", "5", "--num-steps", "4",
        "--no-progress", "--out", out)
    t = load_file(str(out))
    assert t["samples"].shape == (5, 1, 28, 28) and t["samples"].dtype == torch.float32
    assert t["labels"].tolist() == [3, 7, 3, 7, 3]
    assert 0 <= t["samples"].min() and t["samples"].max() <= 1
    # same seed, different batch size: the same digits (per-sample noise streams)
    out2 = tmp_path / "s2.safetensors"
    run("mnist", "sample", "--model", "tiny_class", "--labels", "3", "7", "--n", "5", "--num-steps", "4",
        "--batch-size", "2", "--no-progress", "--out", out2)
    torch.testing.assert_close(load_file(str(out2))["samples"], t["samples"], atol=1e-5, rtol=0)

    run("mnist", "sample", "--model", "tiny_class", "--n", "20", "--num-steps", "3", "--sampler", "ddim",
        "--no-progress", "--out", tmp_path / "grid.png", "--gif", tmp_path / "grid.gif")
    assert png(tmp_path / "grid.png").size == (10 * 28 * 4, 2 * 28 * 4)  # 10 per row, upscaled x4
    gif = Image.open(tmp_path / "grid.gif")
    assert gif.n_frames >= 2 and gif.size == (10 * 28 * 4, 2 * 28 * 4)

    run("mnist", "sample", "--model", "tiny_time", "--n", "3", "--num-steps", "2", "--no-progress",
        "--out", tmp_path / "t.npz")
    import numpy as np

    z = np.load(tmp_path / "t.npz")
    assert z["samples"].shape == (3, 1, 28, 28) and z["labels"].tolist() == [-1, -1, -1]
    run("mnist", "sample", "--model", "tiny_flow", "--n", "2", "--num-steps", "2", "--no-progress",
        "--out", tmp_path / "f.safetensors")
    assert load_file(str(tmp_path / "f.safetensors"))["samples"].shape == (2, 1, 28, 28)


def test_mnist_sample_errors(tmp_path, capsys):
    assert "unknown pretrained MNIST model 'nope'" in error_of(capsys, "mnist", "sample", "--model", "nope",
                                                                 "--out", tmp_path / "x.png")
    assert "tiny_class" in error_of(capsys, "mnist", "sample", "--model", "nope", "--out", tmp_path / "x.png")
    assert "--out" in error_of(capsys, "mnist", "sample", "--model", "tiny_class", "--out", tmp_path / "x.jpg")
    assert "--labels" in error_of(capsys, "mnist", "sample", "--model", "tiny_class", "--labels", "12",
                                  "--out", tmp_path / "x.png")
    assert "not class-conditional" in error_of(capsys, "mnist", "sample", "--model", "tiny_time", "--labels", "1",
                                               "--out", tmp_path / "x.png")
    assert "denoiser" in error_of(capsys, "mnist", "sample", "--model", "tiny_denoiser", "--out", tmp_path / "x.png")
    assert "--n" in error_of(capsys, "mnist", "sample", "--model", "tiny_class", "--n", "0",
                             "--out", tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_mnist_list(capsys):
    run("mnist", "list")
    out = capsys.readouterr().out
    assert "tiny_class" in out and "tiny_denoiser" in out and "classifier" not in out


def test_output_into_a_closed_pipe_stops_quietly():
    """`diffaccel mnist list | head -0`: the reader has gone before the first line; the command
    stops with the status a shell gives a writer killed by SIGPIPE (141), no traceback."""
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "diffaccel.cli", "mnist", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # long before the interpreter has imported torch and written a line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# ----------------------------------------------------------------------------- mnist eval
@pytest.fixture
def small_mnist(monkeypatch):
    """Evaluation data: 200 random 'digits' per split instead of MNIST (the CLI's plumbing is under test)."""
    from diffaccel.mnist import evaluate

    g = torch.Generator().manual_seed(0)
    data = {s: (torch.rand(200, 1, 28, 28, generator=g), torch.arange(200) % 10) for s in ("train", "test")}
    monkeypatch.setattr(evaluate, "mnist_tensors", lambda split, root=None, **kw: data[split])


def test_mnist_eval_generator(tmp_path, weights_dir, small_mnist, capsys):
    js = tmp_path / "eval.json"
    run("mnist", "eval", "--model", "tiny_class", "--n", "20", "--num-steps", "3", "--classifier",
        weights_dir / "classifier.safetensors", "--json", js, "--no-progress")
    out = capsys.readouterr().out
    assert "Fréchet distance" in out and "floor" in out and "0.1234" in out and "label accuracy" in out
    res = json.loads(js.read_text())
    assert res["n"] == 20 and res["num_steps"] == 3 and res["classifier_test_accuracy"] == 0.1234
    assert res["frechet_distance"] >= 0 and res["frechet_floor_train_vs_test"] >= 0 and 0 <= res["label_accuracy"] <= 1


def test_mnist_eval_denoiser_and_errors(tmp_path, weights_dir, small_mnist, capsys):
    js = tmp_path / "d.json"
    run("mnist", "eval", "--model", "tiny_denoiser", "--n", "50",
        "--classifier", weights_dir / "classifier.safetensors", "--json", js)
    res = json.loads(js.read_text())
    assert set(res["psnr_db"]) == {"0", "0.2", "0.4", "0.5", "0.6", "0.8", "1"} and res["n"] == 50
    assert "PSNR sigma=0.5" in capsys.readouterr().out
    err = error_of(capsys, "mnist", "eval", "--model", "tiny_class", "--classifier", tmp_path / "none.safetensors")
    assert "none.safetensors" in err and "train-classifier" in err


# ----------------------------------------------------------------------------- figures / demo
def test_figures_and_demo_call_the_report(tmp_path, monkeypatch, capsys):
    calls = {}
    report = types.ModuleType("diffaccel.report")
    partb = types.ModuleType("diffaccel.report.partb")
    demo = types.ModuleType("diffaccel.report.demo")
    html = types.ModuleType("diffaccel.report.html")
    partb.write_partb_figures = lambda out, **kw: calls.setdefault("figures", (Path(out), kw))
    html.render_index = lambda figs, out, title: (calls.setdefault("index", figs), Path(out) / "index.html")[1]
    demo.run_demo = lambda out, **kw: (calls.setdefault("demo", (Path(out), kw)), Path(out) / "index.html")[1]
    for m in (report, partb, demo, html):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    run("mnist", "figures", "--out", tmp_path / "fig", "--quick", "--seed", "3", "--no-progress")
    assert calls["figures"] == (tmp_path / "fig", {"seed": 3, "quick": True, "data_dir": None, "progress": False})
    assert calls["index"] == calls["figures"]  # the figures are rendered into fig/index.html
    assert capsys.readouterr().out.strip() == str(tmp_path / "fig" / "index.html")
    run("demo", "--out", tmp_path / "demo", "--if-stage1", "a", "--embeds", "e.pth")
    assert calls["demo"][1] == {"seed": 0, "quick": False, "if_stage1": "a", "if_stage2": None, "embeds": "e.pth",
                                "device": "cpu", "progress": True, "data_dir": None, "if_image": None}
    assert capsys.readouterr().out.strip() == str(tmp_path / "demo" / "index.html")
    assert "--embeds" in error_of(capsys, "demo", "--out", tmp_path / "d2", "--if-stage1", "a")


# ----------------------------------------------------------------------------- Part A on MNIST
def test_part_a_on_mnist(tmp_path, digit_png, capsys):
    m = ["--model", "tiny_class", "--no-progress"]
    run("forward", *m, "--image", digit_png, "--t", "50", "150", "--out", tmp_path / "fw")
    assert png(tmp_path / "fw" / "forward.png").size == (3 * 112, 112)
    assert png(tmp_path / "fw" / "forward_t150.png").size == (112, 112)
    run("blur-denoise", *m, "--image", digit_png, "--t", "100", "--out", tmp_path / "bl")
    png(tmp_path / "bl" / "blur_t100.png")
    run("one-step", *m, "--image", digit_png, "--t", "100", "--prompt", "1", "--out", tmp_path / "os")
    png(tmp_path / "os" / "one_step_t100.png")
    run("iterative", *m, "--image", digit_png, "--stride", "60", "--i-start", "1", "--every", "1", "--out",
        tmp_path / "it", "--gif", tmp_path / "it.gif")
    for f in ("noisy", "iterative", "iterative_steps", "one_step", "blur"):
        png(tmp_path / "it" / f"{f}.png")
    assert Image.open(tmp_path / "it.gif").n_frames >= 2
    run("sample", *m, *STEPS, "--n", "3", "--prompt", "4", "--out", tmp_path / "sa")
    assert png(tmp_path / "sa" / "sample_2.png").mode == "L"
    run("cfg", *m, *STEPS, "--n", "2", "--prompt", "4", "--out", tmp_path / "cfg", "--gif", tmp_path / "cfg.gif")
    png(tmp_path / "cfg" / "samples.png")
    run("sdedit", *m, *STEPS, "--image", digit_png, "--i-start", "1", "2", "--out", tmp_path / "sd")
    assert png(tmp_path / "sd" / "sdedit.png").size == (3 * 112, 112)
    run("img2img", *m, *STEPS, "--image", digit_png, "--prompt", "8", "--i-start", "1", "--out", tmp_path / "i2i")
    png(tmp_path / "i2i" / "img2img_i1.png")
    run("inpaint", *m, *STEPS, "--image", digit_png, "--mask", "top-half", "--prompt", "7", "--out", tmp_path / "ip")
    png(tmp_path / "ip" / "inpaint.png")
    run("anagram", *m, *STEPS, "--prompts", "1", "7", "--out", tmp_path / "an", "--animate", tmp_path / "an.gif")
    png(tmp_path / "an" / "anagram_view1_flip.png")
    assert Image.open(tmp_path / "an.gif").n_frames > 2
    run("hybrid", *m, *STEPS, "--prompts", "0", "1", "--kernel-size", "9", "--sigma", "1.5", "--out", tmp_path / "hy")
    png(tmp_path / "hy" / "hybrid.png")
    png(tmp_path / "hy" / "hybrid_component1.png")


def test_part_a_errors(tmp_path, digit_png, capsys):
    m = ["--model", "tiny_class", "--out", tmp_path / "o"]
    assert "'nope'" in error_of(capsys, "sample", "--model", "nope", "--out", tmp_path / "o")
    assert "hub id" in error_of(capsys, "sample", "--model", "runs/typo", "--out", tmp_path / "o")
    assert "digit label" in error_of(capsys, "sample", *m, "--prompt", "cat")
    assert "digit label" in error_of(capsys, "sample", *m, "--prompt", "11")
    assert "missing.png" in error_of(capsys, "forward", *m, "--image", tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert "not an image file" in error_of(capsys, "forward", *m, "--image", bad)
    err = error_of(capsys, "forward", *m, "--image", digit_png, "--no-resize")
    assert "30x40" in err and "28x28" in err
    assert "i_start" in error_of(capsys, "iterative", *m, "--image", digit_png, "--i-start", "99")
    assert "--mask" in error_of(capsys, "inpaint", *m, "--image", digit_png, "--mask", "nowhere.png")
    assert "invalid choice" in error_of(capsys, "anagram", *m, "--prompts", "1", "7", "--views", "identity", "wobble")
    assert "give --views" in error_of(capsys, "anagram", *m, "--prompts", "1", "7", "3")
    assert "pair up" in error_of(capsys, "anagram", *m, "--prompts", "1", "7", "3", "--views", "identity", "flip")
    assert "needs 2 prompts" in error_of(capsys, "hybrid", *m, "--prompts", "1")
    assert "stage-II" in error_of(capsys, "upsample", *m, "--image", digit_png)
    assert "--embeds is for DeepFloyd IF" in error_of(capsys, "sample", *m, "--embeds", "e.pth")
    assert "not both" in error_of(capsys, "cfg", *m, "--num-steps", "3", "--stride", "30")
    assert "a noise-predicting DDPM model" in error_of(capsys, "sample", "--model", "tiny_flow", "--out", tmp_path)


# ----------------------------------------------------------------------------- Part A on IF
E = 32


def _tiny_if_unet(stage: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=3 if stage == 1 else 6, out_channels=6, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=E, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", norm_num_groups=8, class_embed_type="timestep" if stage == 2 else None)


@pytest.fixture(scope="module")
def if_model(tmp_path_factory):
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler

    from diffaccel.pipelines.denoisers import IF_SCHEDULER_CONFIG
    from diffaccel.pipelines.loading import save_prompt_embeds

    root = tmp_path_factory.mktemp("if")
    for stage in (1, 2):
        _tiny_if_unet(stage).save_pretrained(root / f"stage{stage}" / "unet")
        DDPMScheduler.from_config(IF_SCHEDULER_CONFIG).save_pretrained(root / f"stage{stage}" / "scheduler")
    g = torch.Generator().manual_seed(1)
    save_prompt_embeds({p: torch.randn(1, 77, E, generator=g) for p in ["", "a high quality photo", "a dog", "a man"]},
                       root / "embeds.pth")
    rgb = (torch.rand(40, 50, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(rgb).save(root / "photo.png")
    return root


def test_part_a_on_if(if_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = ["--model", if_model / "stage1", "--embeds", if_model / "embeds.pth", "--no-progress"]
    run("cfg", *m, *STEPS, "--n", "2", "--prompt", "a dog", "--out", tmp_path / "cfg")
    im = png(tmp_path / "cfg" / "sample_1.png")
    assert im.mode == "RGB" and im.size == (16 * 8, 16 * 8)
    run("sdedit", *m, *STEPS, "--image", if_model / "photo.png", "--i-start", "1", "--out", tmp_path / "sd")
    png(tmp_path / "sd" / "sdedit_i1.png")
    run("anagram", *m, *STEPS, "--prompts", "a dog", "a man", "--views", "identity", "rotate_cw",
        "--out", tmp_path / "an")
    png(tmp_path / "an" / "anagram_view1_rotate_cw.png")
    run("upsample", "--model", if_model / "stage2", "--embeds", if_model / "embeds.pth", "--image",
        if_model / "photo.png", "--num-steps", "2", "--prompt", "a dog", "--no-progress", "--out", tmp_path / "up")
    assert png(tmp_path / "up" / "upsampled.png").size == (16 * 8, 16 * 8)
    assert png(tmp_path / "up" / "low_res.png").size == (4 * 32, 4 * 32)
    up = ["upsample", "--model", if_model / "stage2", "--embeds", if_model / "embeds.pth", "--image",
          if_model / "photo.png", "--num-steps", "2", "--no-progress"]
    run(*up, "--prompts", "a dog", "a man", "--views", "identity", "flip", "--out", tmp_path / "up2")
    assert png(tmp_path / "up2" / "upsampled_view1_flip.png").size == (16 * 8, 16 * 8)
    run(*up, "--prompts", "a dog", "a man", "--factorization", "high_low", "--kernel-size", "1", "--sigma", "0.25",
        "--out", tmp_path / "up3")  # scaled by 4 to kernel 5, sigma 1 at 16 px
    png(tmp_path / "up3" / "upsampled.png")
    assert "pair up" in error_of(capsys, *up, "--prompts", "a dog", "--views", "identity", "flip",
                                 "--out", tmp_path / "x")
    assert "too large" in error_of(capsys, *up, "--prompts", "a dog", "a man", "--factorization", "high_low",
                                   "--out", tmp_path / "x")  # 33 -> 133 px on a 16-px stage II

    assert "--embeds FILE is required" in error_of(capsys, "sample", "--model", if_model / "stage1", "--out", tmp_path)
    err = error_of(capsys, "cfg", *m, *STEPS, "--prompt", "a cat", "--out", tmp_path / "x")
    assert "'a cat'" in err and "available prompts" in err and "a dog" in err
    assert "stage-II" in error_of(capsys, "sample", "--model", if_model / "stage2", "--embeds",
                                  if_model / "embeds.pth", "--out", tmp_path / "x")
    assert "embeddings file not found" in error_of(capsys, "sample", "--model", if_model / "stage1", "--embeds",
                                                   tmp_path / "none.pth", "--out", tmp_path / "x")


# ----------------------------------------------------------------------------- errors a person can act on
def one_line_error(capsys, *argv) -> str:
    """The command exits with 2 and prints exactly one line, ``... error: ...``."""
    err = error_of(capsys, *argv)
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def test_decompression_bomb_image(tmp_path, digit_png, monkeypatch, capsys):
    from PIL import Image as PILImage

    # Pillow refuses images over 2 x MAX_IMAGE_PIXELS: lower the limit instead of writing a huge file
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    err = one_line_error(capsys, "forward", "--model", "tiny_class", "--image", digit_png, "--out", tmp_path / "o")
    assert "--image" in err and "too large" in err and "digit.png" in err
    err = one_line_error(capsys, "inpaint", "--model", "tiny_class", "--image", digit_png, "--mask", digit_png,
                         "--out", tmp_path / "o")
    assert "too large" in err and "digit.png" in err


@pytest.mark.parametrize("device", ["banana", "cuda:x"])
def test_device_that_does_not_exist(tmp_path, device, capsys):
    err = one_line_error(capsys, "mnist", "sample", "--model", "tiny_class", "--device", device,
                         "--out", tmp_path / "x.png")
    assert "--device" in err and "not a torch device" in err
    err = one_line_error(capsys, "sample", "--model", "tiny_class", "--device", device, "--out", tmp_path / "o")
    assert "--device" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is not usable")
def test_device_cuda_without_cuda(tmp_path, capsys):
    for argv in (["mnist", "sample", "--model", "tiny_class", "--out", tmp_path / "x.png"],
                 ["mnist", "train", "--preset", "ddpm_class", "--out", tmp_path / "run"],
                 ["cfg", "--model", "tiny_class", "--out", tmp_path / "o"]):
        err = one_line_error(capsys, *argv, "--device", "cuda")
        assert "--device" in err and "'cuda'" in err and "use --device cpu" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_guidance_scale_must_be_finite(tmp_path, digit_png, value, capsys):
    err = one_line_error(capsys, "mnist", "sample", "--model", "tiny_class", f"--guidance-scale={value}",
                         "--out", tmp_path / "x.png")
    assert "--guidance-scale" in err and "finite" in err
    err = one_line_error(capsys, "sdedit", "--model", "tiny_class", "--image", digit_png, f"--guidance-scale={value}",
                         "--out", tmp_path / "sd")
    assert "--guidance-scale" in err and "finite" in err
    assert not list(tmp_path.iterdir())


def test_run_folder_without_config_json(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(b"")
    for argv in (["mnist", "sample", "--model", run_dir, "--out", tmp_path / "x.png"],
                 ["mnist", "eval", "--model", run_dir],
                 ["sample", "--model", run_dir, "--out", tmp_path / "o"]):
        err = one_line_error(capsys, *argv)
        assert "config.json" in err and "unknown pretrained" not in err


def test_weights_of_another_model(tmp_path, weights_dir, small_mnist, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    small = TrainConfig(task="ddpm", conditioning="class", hidden=4)
    (run_dir / "config.json").write_text(json.dumps({"train_config": asdict(small),
                                                     "model_config": small.model_config().to_dict()}))
    other = UNet(TrainConfig(task="ddpm", conditioning="time", hidden=8).model_config())
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(run_dir / "model.safetensors"))
    for argv in (["mnist", "sample", "--model", run_dir, "--out", tmp_path / "x.png"],
                 ["cfg", "--model", run_dir, "--out", tmp_path / "o"]):
        err = one_line_error(capsys, *argv)
        assert "model.safetensors" in err and "another model" in err and "missing" in err and "shape" in err
    # a classifier file holding a UNet
    err = one_line_error(capsys, "mnist", "eval", "--model", "tiny_class", "--classifier",
                         run_dir / "model.safetensors")
    assert "model.safetensors" in err and "another model" in err and "DigitClassifier" in err


def test_bad_embeddings_files(if_model, tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    bad = {"malicious.pth": lambda p: torch.save({"a dog": Payload()}, p),
           "empty.pth": lambda p: p.write_bytes(b""),
           "garbage.pth": lambda p: p.write_bytes(b"PK\x03\x04" + b"x" * 64),
           "garbage.safetensors": lambda p: p.write_bytes(b"xx"),
           "intkeys.pth": lambda p: torch.save({0: torch.zeros(1, 77, E), 1: torch.zeros(1, 77, E)}, p)}
    expect = {"malicious.pth": "refused without running them", "empty.pth": "empty or truncated",
              "garbage.pth": "not a torch-saved file", "garbage.safetensors": "not a readable safetensors file",
              "intkeys.pth": "found int key(s) [0, 1]"}
    for name, make in bad.items():
        p = tmp_path / name
        make(p)
        err = one_line_error(capsys, "sample", "--model", if_model / "stage1", "--embeds", p, "--out", tmp_path / "o")
        assert name in err and expect[name] in err, err
    assert not marker.exists()  # the pickle's payload never ran


def test_user_errors_versus_bugs(tmp_path, monkeypatch, capsys):
    """A raise statement of the package is a user error; the same types from elsewhere keep their traceback."""
    from diffaccel import imageio
    from diffaccel.cli.main import is_user_error
    from diffaccel.mnist.checkpoint import load_json
    from diffaccel.report.partb import _sampling_gif

    def caught(fn, *a):
        try:
            fn(*a)
        except Exception as e:  # noqa: BLE001 - the classification under test
            return e
        raise AssertionError(f"{fn.__name__} did not raise")

    assert is_user_error(caught(imageio.display_scale, 0))  # a DiffaccelError
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    assert is_user_error(caught(load_json, garbage))  # a plain ValueError raised by the package's own check
    assert is_user_error(caught(load_json, tmp_path / "missing.json"))  # the package's MissingFileError
    assert not is_user_error(caught(lambda p: p.read_text(), tmp_path / "missing.json"))  # FileNotFoundError from pathlib
    assert not is_user_error(caught(torch.zeros(2).view, 3))  # RuntimeError from torch
    assert not is_user_error(caught(_sampling_gif, None, "no-such-section", []))  # KeyError from a dict lookup
    assert not is_user_error(caught(lambda: int("x")))  # ValueError outside the package

    def buggy():
        raise ValueError("a bug in a command")

    monkeypatch.setattr(pretrained, "list_pretrained", buggy)
    with pytest.raises(ValueError, match="a bug in a command"):
        cli.main(["mnist", "list"])


# ----------------------------------------------------------------------------- flags for library features
def test_sampler_flag_passes_through_only_when_given(tmp_path, monkeypatch, capsys):
    from diffaccel.cli.common import SAMPLERS
    from diffaccel.mnist import sampling
    from diffaccel.pipelines import techniques

    assert SAMPLERS == ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "euler", "heun")
    from diffaccel.samplers import SAMPLERS as LIBRARY_SAMPLERS
    assert set(SAMPLERS) == set(LIBRARY_SAMPLERS)  # the CLI's list (no torch import) is the library's
    calls = []
    real = sampling.sample

    def fake(model, labels=None, n=None, guidance_scale=5.0, num_steps=None, seed=0, *, sampler="ddpm", **kw):
        calls.append(sampler)
        return real(model, labels, n, guidance_scale, num_steps, seed, **kw)

    monkeypatch.setattr(sampling, "sample", fake)
    for extra, want in (([], "ddpm"), (["--sampler", "unipc"], "unipc")):
        calls.clear()
        run("mnist", "sample", "--model", "tiny_class", "--n", "2", "--num-steps", "2", "--no-progress", *extra,
            "--out", tmp_path / "s.safetensors")
        assert calls == [want]
    assert "invalid choice" in error_of(capsys, "mnist", "sample", "--model", "tiny_class", "--sampler", "plms",
                                        "--out", tmp_path / "s.png")

    seen = {}
    real_sample = techniques.sample

    def with_sampler(*a, sampler="ddpm", **kw):
        seen["sampler"] = sampler
        return real_sample(*a, **kw)

    monkeypatch.setattr(techniques, "sample", with_sampler)
    run("sample", "--model", "tiny_class", *STEPS, "--n", "1", "--no-progress", "--sampler", "heun",
        "--out", tmp_path / "a")
    assert seen == {"sampler": "heun"}
    monkeypatch.setattr(techniques, "sample", lambda *a, **kw: real_sample(*a, **kw))  # no sampler argument
    err = one_line_error(capsys, "sample", "--model", "tiny_class", *STEPS, "--no-progress", "--sampler", "heun",
                         "--out", tmp_path / "b")
    assert "--sampler" in err and "not supported" in err
    run("sample", "--model", "tiny_class", *STEPS, "--n", "1", "--no-progress", "--out", tmp_path / "c")


def test_overwrite_flag(tmp_path, monkeypatch, capsys):
    from diffaccel.mnist import train as train_mod

    got = {}

    def fake_train(cfg, out_dir, data_dir=None, resume=False, progress=True, device="cpu", download=False,
                   overwrite=False):
        got.update(resume=resume, overwrite=overwrite, device=device)
        return Path(out_dir) / "model.safetensors"

    monkeypatch.setattr(train_mod, "train", fake_train)
    run("mnist", "train", "--preset", "ddpm_class", "--out", tmp_path / "run", "--overwrite")
    assert got == {"resume": False, "overwrite": True, "device": "cpu"}
    got.clear()
    run("mnist", "train", "--preset", "ddpm_class", "--out", tmp_path / "run")
    assert got["overwrite"] is False
    assert "not allowed with" in error_of(capsys, "mnist", "train", "--preset", "ddpm_class", "--out", tmp_path,
                                          "--overwrite", "--resume")
    monkeypatch.setattr(train_mod, "train", lambda cfg, out_dir, **kw: Path(out_dir))  # no overwrite argument
    err = one_line_error(capsys, "mnist", "train", "--preset", "ddpm_class", "--out", tmp_path / "r", "--overwrite")
    assert "--overwrite" in err and "not supported" in err


# ----------------------------------------------------------------------------- mnist train: run folders
# The library tests (tests/test_mnist_train.py) kill the save at every write boundary; these check what
# a person sees through the command line: one line and exit 2 for every refusal, files kept or cleared.
def _train_argv(out, mnist_dir, *extra, epochs=2):
    return ["mnist", "train", "--preset", "ddpm_class", "--out", out, "--data-dir", mnist_dir, "--hidden", "4",
            "--batch-size", "16", "--epochs", str(epochs), "--train-subset", "32", "--checkpoint-every", "1",
            "--seed", "3", "--threads", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, mnist_dir):
    """An unbroken `diffaccel mnist train` run (2 epochs of 2 steps): its folder (copy before changing) and weights."""
    n = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("cli_train") / "run"
    try:
        assert cli.main([str(a) for a in _train_argv(folder, mnist_dir)]) == 0
    finally:
        torch.set_num_threads(n)
    return folder, load_file(str(folder / "model.safetensors"))


@pytest.fixture
def run_copy(cli_run, tmp_path):
    import shutil

    n = torch.get_num_threads()
    folder = tmp_path / "run"
    shutil.copytree(cli_run[0], folder)
    yield folder
    torch.set_num_threads(n)  # --threads 1 sets it for the process


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_into_an_existing_run_needs_resume_or_overwrite(run_copy, mnist_dir, capsys):
    before = (run_copy / "model.safetensors").read_bytes()
    err = one_line_error(capsys, *_train_argv(run_copy, mnist_dir, epochs=1))
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert (run_copy / "model.safetensors").read_bytes() == before
    assert (run_copy / "epochs" / "epoch_002.safetensors").exists()


def test_train_overwrite_clears_the_old_run(run_copy, mnist_dir, capsys):
    (run_copy / "notes.txt").write_text("mine")
    run(*_train_argv(run_copy, mnist_dir, "--overwrite", epochs=1))
    assert sorted(p.name for p in (run_copy / "epochs").iterdir()) == ["epoch_001.safetensors"]
    assert len((run_copy / "loss.csv").read_text().strip().splitlines()) == 1 + 2  # header + 2 steps
    assert (run_copy / "notes.txt").read_text() == "mine"  # not a file of the run: kept


def test_resume_of_a_corrupt_checkpoint_refuses_and_keeps_the_weights(run_copy, mnist_dir, capsys):
    ckpt = run_copy / "checkpoint.safetensors"
    raw = bytearray(ckpt.read_bytes())
    raw[-20] ^= 0x10  # one bit of one tensor's data
    ckpt.write_bytes(bytes(raw))
    before = (run_copy / "model.safetensors").read_bytes()
    err = one_line_error(capsys, *_train_argv(run_copy, mnist_dir, "--resume"))
    assert "corrupt" in err and "checkpoint.safetensors" in err
    assert (run_copy / "model.safetensors").read_bytes() == before
    ckpt.write_bytes(b"garbage")
    err = one_line_error(capsys, *_train_argv(run_copy, mnist_dir, "--resume"))
    assert "checkpoint.safetensors" in err
    assert (run_copy / "model.safetensors").read_bytes() == before


def test_resume_without_a_checkpoint_refuses(run_copy, mnist_dir, capsys):
    (run_copy / "checkpoint.safetensors").unlink()
    err = one_line_error(capsys, *_train_argv(run_copy, mnist_dir, "--resume"))
    assert "no checkpoint.safetensors to continue from" in err and "--overwrite" in err


def test_killed_then_resumed_run_gives_the_unbroken_runs_weights(cli_run, tmp_path, mnist_dir, monkeypatch, capsys):
    from diffaccel.mnist import train as train_mod

    ref_dir, ref = cli_run
    out = tmp_path / "run"
    real, calls = train_mod.training_loss, {"n": 0}

    def dying_loss(*a, **k):  # killed during the third step (epoch 2), after the step-2 checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "training_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        cli.main([str(a) for a in _train_argv(out, mnist_dir)])
    monkeypatch.setattr(train_mod, "training_loss", real)
    assert not (out / "model.safetensors").exists() and (out / "checkpoint.safetensors").exists()
    run(*_train_argv(out, mnist_dir, "--resume"))
    assert _same_weights(load_file(str(out / "model.safetensors")), ref)
    assert (out / "loss.csv").read_text() == (ref_dir / "loss.csv").read_text()
