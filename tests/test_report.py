"""The report (issue 5): ``run_demo`` in quick mode on stand-in weights built here.

Stand-in weights are randomly initialised UNets saved with the shipped layout
(``NAME.safetensors``, ``NAME.epoch<k>.safetensors``, ``NAME.json``, ``NAME.loss.csv``,
``NAME.md``) — nothing is trained, so the images are noise-like but every code path runs.
The checks: every image named in ``index.html`` exists and is a valid PNG/GIF (GIFs animate),
every written image is in the page, and the same seed gives byte-identical files.
"""
from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from diffaccel.mnist import pretrained
from diffaccel.mnist.checkpoint import atomic_save_tensors
from diffaccel.mnist.models import UNet
from diffaccel.mnist.train import preset

STAND_IN_MODELS = ("ddpm_class", "ddpm_time", "flow_class", "flow_time", "denoiser", "pure_noise")


def build_stand_in_weights(root: Path, hidden: int = 8, epochs=(1, 2), loss_csv: bool = True,
                           names=STAND_IN_MODELS) -> Path:
    """Write random-init MNIST models in the shipped layout into ``root`` (D = ``hidden``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        cfg = preset(name, hidden=hidden, epochs=max(epochs))
        cfg_dict = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
        for ep in (*epochs, None):
            torch.manual_seed(1000 * k + (ep or 0))
            model = UNet(cfg.model_config())
            path = root / (f"{name}.epoch{ep}.safetensors" if ep else f"{name}.safetensors")
            atomic_save_tensors(path, model.state_dict())
        steps = 4 * max(epochs)
        losses = [(s, s // 4, 1.0 / (1 + s)) for s in range(steps)]
        info = {"final_loss": losses[-1][2], "final_epoch_mean_loss": sum(l for *_, l in losses[-4:]) / 4,
                "steps": steps, "wall_time_s": 0.0, "machine": "stand-in", "world_size": 1,
                "command": "random init (tests)", "epochs_shipped": list(epochs), "eval": {}}
        (root / f"{name}.json").write_text(json.dumps(
            {"train_config": cfg_dict, "model_config": cfg.model_config().to_dict(), "info": info}, indent=2))
        (root / f"{name}.md").write_text(f"# stand-in `{name}` (random init, tests only)\n")
        if loss_csv:
            with open(root / f"{name}.loss.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "epoch", "loss"])
                w.writerows(losses)
    return root


@pytest.fixture
def weights_dir(tmp_path_factory, monkeypatch):
    """Stand-in weights; ``pretrained.WEIGHTS_DIR`` is read at import time, so patch it as well as the env."""
    root = build_stand_in_weights(tmp_path_factory.mktemp("weights"))
    monkeypatch.setenv("DIFFACCEL_WEIGHTS_DIR", str(root))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", root)
    return root


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def parse_report(index: Path):
    p = _Images()
    p.feed(index.read_text(encoding="utf-8"))
    return p.srcs, " ".join(p.text)


def check_images(out: Path, srcs) -> None:
    """Every named image exists and decodes; every GIF has more than one frame."""
    from PIL import Image

    assert srcs, "the report names no images"
    for src in srcs:
        path = out / src
        assert path.is_file(), f"{src} is named in index.html but was not written"
        with Image.open(path) as im:
            im.verify()  # structure + checksums
        with Image.open(path) as im:
            im.load()  # and it decodes
            assert im.width > 0 and im.height > 0
            if path.suffix == ".gif":
                assert getattr(im, "n_frames", 1) > 1, f"{src} does not animate"


def _files(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture
def quick_report(weights_dir, tmp_path, mnist_dir):
    from diffaccel.report.demo import run_demo

    out = tmp_path / "report"
    index = run_demo(out, seed=0, quick=True, progress=False, data_dir=mnist_dir)
    return out, index


def test_quick_demo_writes_every_figure(quick_report):
    from diffaccel.report.html import SECTIONS
    from diffaccel.report.parta import IF_NEEDS

    out, index = quick_report
    assert index == out / "index.html"
    srcs, text = parse_report(index)
    check_images(out, srcs)
    written = {p.name for p in out.iterdir() if p.suffix in (".png", ".gif")}
    assert written == set(srcs), f"images written but not in the page: {sorted(written - set(srcs))}"
    assert sum(s.endswith(".gif") for s in srcs) >= 5  # CFG run, anagram turning, 3 sampling grids
    for sec in [s for s in SECTIONS if s != "A"]:
        assert SECTIONS[sec] in text, f"section {sec} missing from the report"
    # without IF weights, one sentence says what the IF sections need
    assert text.count(IF_NEEDS) == 1 and "--if-stage1" in IF_NEEDS and "--embeds" in IF_NEEDS
    assert "Not rendered" not in text  # every stand-in model is there, so every figure is rendered
    # "after the first and last epochs": the first snapshot and the final weights
    assert "after epoch 1" in text and "after epoch 2 (final)" in text
    # every caption states the seed
    html = index.read_text()
    assert html.count("<figcaption>") == html.count("<figure ")
    for cap in html.split("<figcaption>")[1:]:
        cap = cap.split("</figcaption>")[0]
        assert "seed" in cap or "loss" in cap.lower(), cap


def test_same_seed_same_report(quick_report, tmp_path, mnist_dir):
    from diffaccel.report.demo import run_demo
    from diffaccel.report.partb import write_partb_figures

    out, _ = quick_report
    again = run_demo(tmp_path / "again", seed=0, quick=True, progress=False, data_dir=mnist_dir).parent
    a, b = _files(out), _files(again)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"same seed, different bytes: {different}"
    # another seed changes the noise of every figure that draws any
    other = tmp_path / "seed1"
    write_partb_figures(other, seed=1, quick=True, progress=False, data_dir=mnist_dir)
    c = _files(other)
    changed = [k for k in c if k.endswith(".png") and c[k] != a.get(k)]
    assert all(any(part in k for k in changed) for part in ("noising_d0_s0.2", "denoiser_d0_noisy", "ood_noisy",
                                                            "pure_noise_in0", "ddpm_class_samples",
                                                            "flow_time_samples")), changed


def test_demo_runs_offline_with_the_shipped_digits(quick_report, tmp_path, monkeypatch):
    """No MNIST folder anywhere and every download failing: the demo renders from the digits
    shipped in the package, and the report is byte-identical to the one made from the full set."""
    import urllib.request

    from diffaccel.mnist import data

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    def no_full_set(*args, **kwargs):
        raise AssertionError("the demo read the full MNIST set although none was given")

    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(data, "_fetch", no_network)
    for name in ("download_mnist", "load_mnist", "mnist_tensors"):
        monkeypatch.setattr(data, name, no_full_set)
    data.clear_cache()

    from diffaccel.report.demo import run_demo

    offline = run_demo(tmp_path / "offline", seed=0, quick=True, progress=False).parent
    srcs, _ = parse_report(offline / "index.html")
    check_images(offline, srcs)
    a, b = _files(quick_report[0]), _files(offline)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"the offline report differs from the one made from the full set: {different}"


def test_missing_loss_log_and_model_are_said(weights_dir, tmp_path, mnist_dir):
    from diffaccel.report.partb import write_partb_figures

    (weights_dir / "ddpm_time.loss.csv").unlink()
    for p in weights_dir.glob("flow_time*"):
        p.unlink()
    figs = write_partb_figures(tmp_path / "b", quick=True, progress=False, data_dir=mnist_dir)
    notes = {f.title: f.note for f in figs if f.note}
    assert "ddpm_time.loss.csv" in notes["Training loss of `ddpm_time`"]
    assert any("flow_time" in n and "not among the shipped weights" in n for n in notes.values())
    for f in figs:
        assert bool(f.files) != bool(f.note), f.title
        for src in f.files:
            assert (tmp_path / "b" / src).is_file()


def test_demo_argument_errors(tmp_path):
    from diffaccel.report.demo import run_demo

    with pytest.raises(ValueError, match="seed"):
        run_demo(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="if_stage1"):
        run_demo(tmp_path, if_stage2="x")
    with pytest.raises(ValueError, match="embeds"):
        run_demo(tmp_path, if_stage1="x")


# ----------------------------------------------------------------------------- IF
def _tiny_if(tmp: Path) -> tuple:
    """Random IF-architecture stage I and II UNets + prompt embeddings, saved like the hub layout."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from diffaccel.pipelines.denoisers import IF_SCHEDULER_CONFIG
    from diffaccel.pipelines.loading import save_prompt_embeds

    dirs = []
    for stage in (1, 2):
        torch.manual_seed(stage)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=3 if stage == 1 else 6, out_channels=6, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            cross_attention_dim=32, encoder_hid_dim=16, attention_head_dim=8, addition_embed_type="text",
            addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
            act_fn="gelu", norm_num_groups=8, class_embed_type="timestep" if stage == 2 else None)
        d = tmp / f"stage{stage}"
        unet.save_pretrained(d / "unet")
        DDPMScheduler.from_config(IF_SCHEDULER_CONFIG).save_pretrained(d / "scheduler")
        if stage == 2:
            DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(d / "image_noising_scheduler")
        dirs.append(d)
    g = torch.Generator().manual_seed(0)
    prompts = ["", "a high quality photo", "a rocket ship", "a lithograph of a skull", "a lithograph of waterfalls",
               "an oil painting of an old man", "an oil painting of people around a campfire"]
    embeds = tmp / "embeds.pth"
    save_prompt_embeds({p: torch.randn(1, 77, 16, generator=g) for p in prompts}, embeds)
    return dirs[0], dirs[1], embeds


def test_demo_with_if_weights(weights_dir, tmp_path, mnist_dir, monkeypatch):
    pytest.importorskip("diffusers")
    from diffaccel.report.demo import run_demo
    from diffaccel.report.parta import IF_NEEDS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s1, s2, embeds = _tiny_if(tmp_path / "if")
    from PIL import Image

    photo = tmp_path / "campanile.png"  # the user's own picture (any size: center-cropped, resized)
    Image.new("RGB", (120, 90), (200, 40, 40)).save(photo)
    out = tmp_path / "report_if"
    index = run_demo(out, seed=0, quick=True, if_stage1=s1, if_stage2=s2, embeds=embeds, progress=False,
                     data_dir=mnist_dir, if_image=str(photo))
    srcs, text = parse_report(index)
    check_images(out, srcs)
    if_imgs = [s for s in srcs if s.startswith("a_if_")]
    # every Part-A technique has IF images, stage II included
    for part in ("forward", "blur", "onestep", "iter_step", "cmp_iterative", "samples", "cfg_", "sdedit_",
                 "sdedit_drawn", "inpaint", "img2img", "anagram", "hybrid", "stage2"):
        assert any(part in s for s in if_imgs), f"no IF image for {part}"
    assert IF_NEEDS not in text
    assert "Part A with DeepFloyd IF" in text and "“a rocket ship”" in text
    assert f"the image {photo}" in text  # the IF sections edited the user's image

    with Image.open(out / next(s for s in if_imgs if "stage2" in s)) as im:
        assert im.mode == "RGB"


# ----------------------------------------------------------------------------- helpers
def test_drawn_digit_is_mnist_like():
    from diffaccel.report.images import draw_digit

    d = draw_digit(2)
    assert d.shape == (1, 1, 28, 28) and 0 <= d.min() and d.max() <= 1
    ink = (d > 0.5).float()
    assert 0.05 < ink.mean() < 0.35  # strokes, not a blank or a filled square
    assert ink[..., :3, :].sum() == 0 and ink[..., :, :3].sum() == 0  # MNIST-like margins
    assert torch.equal(draw_digit(2, seed=0), draw_digit(2, seed=0))
    with pytest.raises(ValueError, match="draw_digit"):
        draw_digit(9)
    assert math.isfinite(float(d.sum()))


def test_frontier_plots_the_most_complete_n(tmp_path):
    """Fréchet distances at different n do not compare: the plot takes one n, the one with the most
    points (the larger on a tie), and draws the course loop where it was measured at that n."""
    from diffaccel.report.frontier import _points, plot_frontier

    def pt(model, sampler, nfe, n, fd):
        return {"model": model, "sampler": sampler, "nfe": nfe, "n": n, "frechet_distance": fd, "label_accuracy": 1.0}

    res = {"points": [pt("ddpm_class", "dpmpp_2m", k, 500, 80.0 + k) for k in (3, 5, 10)]
           + [pt("ddpm_class", "ddpm", 300, 500, 95.0), pt("ddpm_class", "unipc", 5, 1000, 71.0),
              pt("ddpm_class", "dpmpp_2m", 5, 1000, 73.0)],
           "floor": {"500": 18.3, "1000": 13.3}}
    pts, n = _points(res, None)
    assert n == 500 and len(pts) == 4
    assert _points(res, 1000)[1] == 1000 and {p["sampler"] for p in _points(res, 1000)[0]} == {"unipc", "dpmpp_2m"}
    res["points"] += [pt("ddpm_class", "ddim", 10, 1000, 86.0), pt("ddpm_class", "ddim", 5, 1000, 80.0)]
    assert _points(res, None)[1] == 1000  # 4 points each: the larger n
    path = plot_frontier(res, tmp_path / "f.png", n=500)
    from PIL import Image

    # each model its own most complete n: a model measured only at n = 1,000 gets its own panel
    res["points"] += [pt("flow_time", "euler", k, 1000, 60.0 - k) for k in (5, 10)]
    assert _points(res, None, "flow_time") == (res["points"][-2:], 1000)
    assert _points(res, None, "ddpm_class")[1] == 1000
    two = plot_frontier(res, tmp_path / "h.png")
    assert Image.open(two).size[0] > 1.8 * Image.open(path).size[0]  # two panels, one before
    res["points"] += [pt(m, "euler", 5, 1000, 50.0) for m in ("flow_class", "ddpm_time")]
    four = Image.open(plot_frontier(res, tmp_path / "four.png")).size
    assert four[0] == Image.open(two).size[0] and four[1] > 1.8 * Image.open(two).size[1]  # two a row: fits the page
    assert Image.open(path).size[0] > 300
    with pytest.raises(ValueError, match="no points with n = 7"):
        plot_frontier(res, tmp_path / "g.png", n=7)


def test_frontier_results_from_parallel_runs_merge(tmp_path):
    """bench_samplers --merge: new keys appended, a key measured twice kept once, a differing
    Fréchet distance for the same seeded point refused, timings keep the load they ran under."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_samplers", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_samplers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def pt(sampler, nfe, fd):
        return {"model": "ddpm_time", "sampler": sampler, "nfe": nfe, "n": 1000, "seed": 0,
                "guidance_scale": 5.0, "frechet_distance": fd}

    a = {"points": [pt("ddpm", 5, 2887.0), pt("ddim", 5, 90.0)], "floor": {"1000": 13.309},
         "timing": [{"model": "ddpm_time", "sampler": "ddpm", "nfe": 5, "n": 64, "threads": 1, "seconds": 1.4}],
         "machine": {"load_avg_at_start": 2.0}}
    b = {"points": [pt("ddim", 5, 90.0), pt("unipc", 5, 40.0)], "floor": {"1000": 13.309, "500": 18.34},
         "course_loop": {"ddpm_class": {"n": 64, "seconds": 370.2}}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "all.json"
    res = bench.merge([tmp_path / "a.json", tmp_path / "b.json"], out)
    assert [(p["sampler"], p["frechet_distance"]) for p in res["points"]] == [("ddpm", 2887.0), ("ddim", 90.0),
                                                                              ("unipc", 40.0)]
    assert res["floor"] == {"1000": 13.309, "500": 18.34} and res["course_loop"]["ddpm_class"]["seconds"] == 370.2
    assert res["timing"][0]["load_avg_at_start"] == 2.0
    assert json.loads(out.read_text()) == res
    res["points"].append(dict(pt("ddpm", 10, 12.5), nfe_actual=9, label_accuracy=0.987))
    table = bench.markdown(res).splitlines()
    assert table[1] == "| `ddpm_time`, n = 1,000 (floor 13.309) | NFE 5 | NFE 10 |"
    assert table[3:6] == ["| ddpm | 2887.0 | 12.5 (98.7%) [9] |", "| ddim | 90.0 |  |", "| unipc | 40.0 |  |"]
    b["points"][0]["frechet_distance"] = 91.0
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(ValueError, match="not the same measurement"):
        bench.merge([tmp_path / "b.json"], out)
