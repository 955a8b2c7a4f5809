"""Part A figures (SPEC A1.1 - A1.9 and the animations) for any denoiser.

The same code renders the techniques on the shipped MNIST class-conditional DDPM (where the
class label plays the prompt — the "real results" of Part A on our machines) and, given the
weights, on DeepFloyd IF. A :class:`PartASetup` says what differs between the two (images,
conditions, guidance scale, timesteps of the forward figure); :func:`render_parta` does the rest
through :mod:`diffaccel.pipelines.techniques` — no formula lives here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..pipelines import techniques as T
from ..imageio import FrameRecorder, display_scale, save_gif, save_png
from ..pipelines.animation import animate_view
from ..pipelines.views import get_view
from .html import Cell, Figure, single
from .images import draw_digit, draw_scene
from .partb import Budget, generator_for, model_summary, quick_timesteps

__all__ = ["PartASetup", "render_parta", "mnist_setup", "if_setup", "write_parta_mnist_figures",
           "write_parta_if_figures", "IF_NEEDS"]

#: The one sentence the report shows where the IF sections would be.
IF_NEEDS = ("The same techniques run on DeepFloyd IF when the demo is given the stage-I and stage-II weights "
            "(--if-stage1 DIR_OR_ID --if-stage2 DIR_OR_ID), a file of precomputed T5 prompt embeddings "
            "(--embeds FILE.pth) and a GPU (--device cuda).")

SDEDIT_I_START = (1, 3, 5, 7, 10, 20)  # SPEC A1.7


@dataclass
class PartASetup:
    """What the Part-A figures need from a model. Images are canonical [-1, 1], ``[N, C, H, W]``."""

    den: Any
    key: str  # file prefix and generator key ("mnist", "if")
    model_desc: str
    images: torch.Tensor
    image_names: List[str]
    image_conds: Any  # the condition SDEdit/inpainting guide each image toward (one per image, or one)
    generic_cond: Any  # "a high quality photo" (IF) / unconditional (MNIST)
    generic_desc: str
    forward_ts: List[int]
    cfg_conds: List[Any]
    cfg_names: List[str]
    guidance: float
    drawn: torch.Tensor
    drawn_cond: Any
    drawn_desc: str
    img2img_source: int  # index into images
    img2img_cond: Any
    img2img_desc: str
    anagram_conds: Tuple[Any, Any]
    anagram_desc: Tuple[str, str]
    hybrid_conds: Tuple[Any, Any]
    hybrid_desc: Tuple[str, str]
    timesteps: Optional[List[int]] = None  # None: the course's strided timesteps
    n_samples: int = 10
    n_illusions: int = 4
    section: Optional[str] = None  # None: each figure in its own A1.x section; else all in this one
    #: extra anagrams for the "every view" figure: (views, conditions) pairs, one sample each;
    #: views are names or View objects (for options), the first view is the upright reading
    view_anagrams: List[Tuple[Sequence[Any], Sequence[Any]]] = field(default_factory=list)
    stage2: Any = None  # IF stage II denoiser (A0 upsampling of the CFG samples)
    stage2_steps: int = 50
    figures: List[Figure] = field(default_factory=list)


def _cond_text(c) -> str:
    return "unconditional" if c is None else (f"class {c}" if isinstance(c, int) else f"“{c}”")


def _toward(conds) -> str:
    return "each image's own label" if isinstance(conds, list) else _cond_text(conds)


def render_parta(s: PartASetup, out_dir, seed: int = 0, progress: bool = True) -> List[Figure]:
    """Render every Part-A figure for ``s`` into ``out_dir``; returns the figure records."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    den = s.den
    ts = list(s.timesteps) if s.timesteps is not None else T.default_timesteps(den)
    H = den.sample_shape[-1]
    scale = display_scale(H)
    figs: List[Figure] = []

    def sec(name: str) -> str:
        return s.section or name

    def title(name: str, text: str) -> str:
        return f"{name} {text}" if s.section else text

    def gen(k: str) -> torch.Generator:
        return generator_for(seed, f"{s.key}/{k}")

    def png(name: str, x: torch.Tensor, label: str = "", width=None, sc: Optional[int] = None, **kw) -> Cell:
        fname = f"a_{s.key}_{name}.png"
        save_png(x, out / fname, value_range=(-1.0, 1.0), scale=sc or scale, pad=1, **kw)
        return Cell(fname, label, width)

    def show_xt(x_t: torch.Tensor) -> torch.Tensor:  # a noisy image (model space) -> canonical, for display
        return den.from_model_range(x_t).clamp(-1, 1)

    seed_txt = f"seed {seed}"
    steps_txt = (f"the {len(ts)} strided timesteps {ts[0]}, {ts[1]}, ..., {ts[-1]}"
                 + (" (the course's stride scaled to this model's T)" if s.timesteps is None else
                    " (reduced for the quick mode)"))
    g_txt = f"classifier-free guidance g = {s.guidance:g} (one batched [uncond, cond] forward per step)"
    x0 = s.images[:1]
    T_train = den.num_train_timesteps

    # -- A1.1 - A1.3 ------------------------------------------------------------------
    def forward_figs():
        noise = torch.randn(x0.shape, generator=gen("A1.1"))
        xts = [T.forward(den, x0, t, noise=noise) for t in s.forward_ts]
        heads = ["original"] + [f"t = {t}" for t in s.forward_ts]
        rows = [[png("forward_orig", x0)] + [png(f"forward_t{t}", show_xt(x)) for t, x in zip(s.forward_ts, xts)]]
        figs.append(Figure(sec("A1.1"), title("A1.1", "The forward process"),
                           f"x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for {s.image_names[0]}, one eps ~ N(0, I) "
                           f"for every t (T = {T_train}); {seed_txt}.", rows, col_headers=heads))
        blur = [T.blur_denoise(x, t=t, num_train_timesteps=T_train) for t, x in zip(s.forward_ts, xts)]
        params = [T.blur_params(t, T_train, H) for t in s.forward_ts]
        figs.append(Figure(sec("A1.2"), title("A1.2", "Classical denoising: Gaussian blur"),
                           "Top: the noisy images of the forward-process figure; bottom: each blurred with a Gaussian "
                           "whose width grows with t (" + "; ".join(f"t = {t}: kernel {k}, sigma {sg:.2f}"
                                                                     for t, (k, sg) in zip(s.forward_ts, params))
                           + f"). Blurring removes noise and detail alike; {seed_txt}.",
                           [[png(f"blur_noisy_t{t}", show_xt(x)) for t, x in zip(s.forward_ts, xts)],
                            [png(f"blur_t{t}", show_xt(b)) for t, b in zip(s.forward_ts, blur)]],
                           col_headers=[f"t = {t}" for t in s.forward_ts], row_headers=["noisy", "blurred"]))
        one = [T.one_step_denoise(den, x, t, cond=s.generic_cond) for t, x in zip(s.forward_ts, xts)]
        figs.append(Figure(sec("A1.3"), title("A1.3", "One-step denoising"),
                           "x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) with eps_hat from one model call "
                           f"({s.generic_desc}), on the noisy images above; {seed_txt}.",
                           [[png(f"onestep_noisy_t{t}", show_xt(x)) for t, x in zip(s.forward_ts, xts)],
                            [png(f"onestep_t{t}", o.clamp(-1, 1)) for t, o in zip(s.forward_ts, one)]],
                           col_headers=[f"t = {t}" for t in s.forward_ts],
                           row_headers=["noisy x_t", "one-step x0_hat"]))

    # -- A1.4 -----------------------------------------------------------------------------
    def iterative_fig():
        i0 = min(10, len(ts) - 2)
        t0 = ts[i0]
        g = gen("A1.4")
        x_t = T.forward(den, x0, t0, generator=g)
        res = T.iterative_denoise(den, x_t, i_start=i0, timesteps=ts, cond=s.generic_cond, generator=g, every=5)
        steps_shown = [ts[i + 1] for i in range(i0, len(ts) - 1) if i % 5 == 0]
        figs.append(Figure(sec("A1.4"), title("A1.4", "Iterative denoising, every 5th step"),
                           f"{s.image_names[0]} noised to t = {t0} (i_start = {i0}) and denoised down {steps_txt} "
                           f"({s.generic_desc}, no guidance); x_t after every 5th step; {seed_txt}.",
                           [[png(f"iter_step{k}", x.clamp(-1, 1)) for k, x in enumerate(res.intermediates)]],
                           col_headers=[f"t = {t}" for t in steps_shown]))
        k, sg = T.blur_params(t0, T_train, H)
        blur = T.blur_denoise(x_t, t=t0, num_train_timesteps=T_train)
        one = T.one_step_denoise(den, x_t, t0, cond=s.generic_cond)
        cells = [png("cmp_orig", x0), png("cmp_noisy", show_xt(x_t)), png("cmp_blur", show_xt(blur)),
                 png("cmp_onestep", one.clamp(-1, 1)), png("cmp_iterative", res.image.clamp(-1, 1))]
        figs.append(Figure(sec("A1.4"), title("A1.4", "Original, noisy, blurred, one-step and iterative"),
                           f"The same noisy image (t = {t0}) denoised three ways: Gaussian blur (kernel {k}, sigma "
                           f"{sg:.2f}), one model call, and iterative denoising over {len(ts) - 1 - i0} steps; "
                           f"{seed_txt}.", [cells],
                           col_headers=["original", f"noisy (t = {t0})", "Gaussian blur", "one-step", "iterative"]))

    # -- A1.5 / A1.6 + GIF --------------------------------------------------------------
    def sampling_figs():
        res = T.sample(den, cond=s.generic_cond, num_samples=s.n_samples, timesteps=ts, generator=gen("A1.5"))
        figs.append(single(sec("A1.5"), title("A1.5", "Samples from pure noise"),
                           f"{s.n_samples} samples: iterative denoising from pure noise (i_start = 0) down "
                           f"{steps_txt}, "
                           f"{s.generic_desc}, no guidance; {seed_txt}.",
                           png("samples", res.image.clamp(-1, 1), nrow=min(5, s.n_samples)).src))
        rec = FrameRecorder(den.from_model_range, value_range=(-1.0, 1.0))
        res = T.sample(den, cond=list(s.cfg_conds), num_samples=len(s.cfg_conds), timesteps=ts,
                       guidance_scale=s.guidance, generator=gen("A1.6"), callback=rec)
        cfg_img = res.image.clamp(-1, 1)
        cells = [png(f"cfg_{k}", cfg_img[k:k + 1], label=n) for k, n in enumerate(s.cfg_names)]
        figs.append(Figure(sec("A1.6"), title("A1.6", "Samples with classifier-free guidance"),
                           f"eps = eps_u + g (eps_c - eps_u) with {g_txt}; one sample per condition "
                           f"({', '.join(s.cfg_names)}), {steps_txt}; {seed_txt}.",
                           [cells[i:i + 5] for i in range(0, len(cells), 5)]))
        frames = rec.frames
        fname = f"a_{s.key}_cfg_denoising.gif"
        save_gif(frames, out / fname, value_range=(-1.0, 1.0), nrow=min(5, len(s.cfg_conds)), scale=scale, pad=1)
        figs.append(single(sec("A-gif"), title("A-gif", "A denoising run"),
                           f"The guided sampling run of the CFG figure: x_t after each of the {len(frames)} steps "
                           f"({steps_txt}); {seed_txt}; loops.", fname))
        if s.stage2 is not None:
            up = T.upsample_stage2(s.stage2, cfg_img, cond=list(s.cfg_conds), num_inference_steps=s.stage2_steps,
                                   generator=gen("A0"))
            sc2 = display_scale(s.stage2.sample_shape[-1], 256)
            ups = [png(f"stage2_{k}", up.image[k:k + 1].clamp(-1, 1), label=n, sc=sc2)
                   for k, n in enumerate(s.cfg_names)]
            figs.append(Figure(sec("A1.6"), title("A0", "Stage II upsampling of the CFG samples"),
                               f"The CFG samples above through IF stage II ({s.stage2_steps} steps, noise level 250, "
                               f"g = 4, dynamic thresholding, as diffusers' IFSuperResolutionPipeline), guided by the "
                               f"same prompts; {seed_txt}.", [ups]))

    # -- A1.7 ---------------------------------------------------------------------------
    sweep = [i for i in SDEDIT_I_START if i < len(ts) - 1]

    def sdedit_table(name, images, conds, names, key):
        res = T.sdedit(den, images, sweep, cond=conds, timesteps=ts, guidance_scale=s.guidance, generator=gen(key))
        rows = []
        for r in range(images.shape[0]):
            rows.append([png(f"{name}_{r}_i{i}", res[i][r:r + 1].clamp(-1, 1)) for i in sweep]
                        + [png(f"{name}_{r}_orig", images[r:r + 1])])
        return rows

    def sdedit_figs():
        rows = sdedit_table("sdedit", s.images, s.image_conds, s.image_names, "A1.7")
        heads = [f"i_start = {i} (t = {ts[i]})" for i in sweep] + ["original"]
        figs.append(Figure(sec("A1.7"), title("A1.7", "SDEdit: noise, then denoise"),
                           "Each image noised to timesteps[i_start] and denoised with " + g_txt
                           + f" toward {_toward(s.image_conds)}, {steps_txt}. Small i_start = more noise = bigger "
                           f"edits; {seed_txt}.",
                           rows, col_headers=heads, row_headers=s.image_names))
        rows = sdedit_table("sdedit_drawn", s.drawn, s.drawn_cond, ["drawing"], "A1.7.1")
        figs.append(Figure(sec("A1.7.1"), title("A1.7.1", "SDEdit on a drawing"),
                           f"{s.drawn_desc} Same sweep and guidance ({_cond_text(s.drawn_cond)}) as above; {seed_txt}.",
                           rows, col_headers=heads))

    def inpaint_fig():
        n = min(2, s.images.shape[0])
        imgs = s.images[:n]
        Hh = den.sample_shape[-2]
        mask = torch.zeros(1, 1, Hh, den.sample_shape[-1])
        mask[..., Hh // 2:, :] = 1
        conds = s.image_conds[:n] if isinstance(s.image_conds, list) else s.image_conds
        res = T.inpaint(den, imgs, mask, cond=conds, timesteps=ts, guidance_scale=s.guidance, generator=gen("A1.7.2"))
        m_show = (mask * 2 - 1).expand(1, den.sample_shape[0], -1, -1)
        rows = [[png(f"inpaint_{r}_orig", imgs[r:r + 1]), png(f"inpaint_{r}_mask", m_show),
                 png(f"inpaint_{r}_kept", imgs[r:r + 1] * (1 - mask) - mask),
                 png(f"inpaint_{r}_result", res.image[r:r + 1].clamp(-1, 1))] for r in range(n)]
        figs.append(Figure(sec("A1.7.2"), title("A1.7.2", "Inpainting the bottom half"),
                           "After every step x_t = m x_t + (1 - m) forward(x_orig, t), m = 1 (white) on the bottom "
                           f"half: the top half is kept and the bottom regenerated from pure noise with {g_txt} "
                           f"toward {_toward(conds)}, "
                           f"{steps_txt}; {seed_txt}.", rows,
                           col_headers=["original", "mask (white = regenerate)", "kept", "inpainted"],
                           row_headers=s.image_names[:n]))

    def img2img_fig():
        src = s.images[s.img2img_source:s.img2img_source + 1]
        i_list = [i for i in (3, 5, 7, 10, 15) if i < len(ts) - 1]
        g = gen("A1.7.3")
        outs = [T.img2img(den, src, s.img2img_cond, i, ts, s.guidance, g) for i in i_list]
        cells = [png("img2img_orig", src)] + [png(f"img2img_i{i}", o.clamp(-1, 1)) for i, o in zip(i_list, outs)]
        figs.append(Figure(sec("A1.7.3"), title("A1.7.3", "Conditional image-to-image"),
                           f"{s.img2img_desc}: SDEdit guided by {_cond_text(s.img2img_cond)} instead of the image's "
                           f"own condition, {g_txt}, {steps_txt}; lower i_start = more noise = closer to the target; "
                           f"{seed_txt}.", [cells],
                           col_headers=["original"] + [f"i_start = {i} (t = {ts[i]})" for i in i_list]))

    # -- A1.8 / A1.9 ---------------------------------------------------------------------
    def anagram_figs():
        res = T.visual_anagram(den, list(s.anagram_conds), ("identity", "flip"), num_samples=s.n_illusions,
                               timesteps=ts, guidance_scale=s.guidance, generator=gen("A1.8"))
        img = res.image.clamp(-1, 1)
        flipped = img.flip(-2)
        n = img.shape[0]
        rows = [[png(f"anagram_{r}", img[r:r + 1]) for r in range(n)],
                [png(f"anagram_{r}_flipped", flipped[r:r + 1]) for r in range(n)]]
        a, b = s.anagram_desc
        figs.append(Figure(sec("A1.8"), title("A1.8", "Visual anagrams"),
                           f"eps = (eps(x_t, {a}) + flip(eps(flip(x_t), {b}))) / 2, flip = upside down, with {g_txt} "
                           f"(all views in one forward), {steps_txt}: each sample reads as {a} upright and {b} upside "
                           f"down; {s.n_illusions} samples (columns), {seed_txt}.", rows,
                           row_headers=[f"upright ({a})", f"flipped ({b})"]))
        fname = f"a_{s.key}_anagram_flip.gif"
        animate_view(img[0], "flip", out / fname, num_frames=16, scale=scale)
        figs.append(single(sec("A-gif"), title("A-gif", "An anagram turning over"),
                           f"The first anagram above flipping upside down and back: {a} becomes {b}; {seed_txt}.",
                           fname))

    def view_gallery_fig():
        if not s.view_anagrams:
            return
        rows, heads = [], []
        for views, conds in s.view_anagrams:
            vs = [get_view(v) for v in views]
            key = "_".join(v.name for v in vs)
            res = T.visual_anagram(den, list(conds), vs, num_samples=1, timesteps=ts, guidance_scale=s.guidance,
                                   generator=gen(f"A1.8/{key}"))
            img = res.image.clamp(-1, 1)
            rows.append([png(f"anagram_{key}_{k}", v.view(img), label=f"{v.name}: {_cond_text(c)}")
                         for k, (v, c) in enumerate(zip(vs, conds))])
            heads.append(" + ".join(v.name for v in vs[1:]))
        figs.append(Figure(sec("A1.8"), title("A1.8", "Every view"),
                           "One anagram per view (rows), each shown through every one of its views: the same "
                           "sample reads as the first condition as it is and as the others through their views. "
                           f"eps = mean_i inverse_i(eps(view_i(x_t), cond_i)) with {g_txt}, {steps_txt}; one "
                           "sample each, " + seed_txt + ". Every view is an exact pixel permutation (negate: a "
                           "sign flip), so pure noise stays pure noise in every view: rotations, negation (the "
                           "digit's ink and the background trade places), a skew (column j rolled by "
                           "int(1.5 (j - H/2)) rows), a 4x4 grid of 7-px patches shuffled (the reference's 8x8 "
                           "grid does not divide 28 px), every pixel shuffled, a 4x4 jigsaw whose pieces keep "
                           "their class (corner, edge, interior) and turn with their knobs, the inner disc turned "
                           "180 degrees, and a 3x3 square hinge (sub-squares of 9 px turned a quarter in place, "
                           "the last row and column stay).", rows, row_headers=heads))

    def hybrid_fig():
        res = T.hybrid(den, s.hybrid_conds[0], s.hybrid_conds[1], 33, 2.0, num_samples=s.n_illusions, timesteps=ts,
                       guidance_scale=s.guidance, generator=gen("A1.9"))
        img = res.image.clamp(-1, 1)
        lo, hi = s.hybrid_desc
        n = img.shape[0]
        rows = [[png(f"hybrid_{r}_small", img[r:r + 1], sc=1) for r in range(n)],
                [png(f"hybrid_{r}_large", img[r:r + 1], sc=2 * scale) for r in range(n)]]
        figs.append(Figure(sec("A1.9"), title("A1.9", "Hybrid images"),
                           f"eps = lowpass(eps(x_t, {lo})) + highpass(eps(x_t, {hi})), Gaussian kernel 33, sigma 2, "
                           f"with {g_txt}, {steps_txt}. Shown at the model's {H} px (as if seen from far: {lo}) and "
                           f"{2 * scale}x enlarged (up close: {hi}); {s.n_illusions} samples (columns), "
                           f"{seed_txt}.", rows,
                           row_headers=[f"{H} px (far: {lo})", f"{2 * scale * H} px (close: {hi})"]))

    steps: List[Tuple[str, Callable]] = [
        ("A1.1-A1.3", forward_figs), ("A1.4", iterative_fig), ("A1.5-A1.6", sampling_figs), ("A1.7", sdedit_figs),
        ("A1.7.2", inpaint_fig), ("A1.7.3", img2img_fig), ("A1.8", anagram_figs),
        ("A1.8 views", view_gallery_fig), ("A1.9", hybrid_fig)]
    bar = tqdm(steps, desc=f"Part A ({s.key})", disable=not progress, dynamic_ncols=True)
    for desc, fn in bar:
        bar.set_postfix_str(desc)
        fn()
    return figs


# ----------------------------------------------------------------------------- MNIST
def _first_of(labels: torch.Tensor, digit: int) -> int:
    idx = (labels == digit).nonzero()
    if idx.numel() == 0:
        raise ValueError(f"no test digit {digit}")
    return int(idx[0])


#: The "every view" figure on MNIST: each view that is not in the A1.8 flip figure, as a
#: 2-view anagram of 1 and 7, and the rotations as a 3- and a 4-view anagram. 28 px is not
#: divisible into the reference's 8x8 patches: a 4x4 grid of 7-px patches instead.
MNIST_VIEW_ANAGRAMS = [
    *[(("identity", v), (1, 7)) for v in ("negate", "skew", get_view("patch_permute", num_patches=4),
                                            "pixel_permute", "jigsaw", "inner_circle", "square_hinge")],
    (("identity", "rotate_cw", "rotate_ccw"), (1, 7, 4)),
    (("identity", "rotate_cw", "rotate_180", "rotate_ccw"), (1, 7, 4, 6)),
]


def mnist_setup(name: str = "ddpm_class", quick: bool = False, data_dir=None, device="cpu") -> PartASetup:
    """The Part-A setup on a shipped class-conditional MNIST DDPM: labels are the prompts, g = 5."""
    from ..mnist.shipped_digits import test_digits
    from ..pipelines.denoisers import MNISTDenoiser

    den = MNISTDenoiser.from_pretrained(name, device=device)
    if den.conditioning != "class":
        raise ValueError(f"Part A on MNIST needs a class-conditional DDPM, {name!r} is {den.conditioning}-conditioned")
    b = Budget.for_mode(quick)
    xt, yt = test_digits(data_dir)  # shipped with the package unless a folder is given
    picks = [_first_of(yt, d) for d in (7, 2, 3)]  # a 3 is the img2img source (a 3 pushed toward 8)
    images = xt[picks] * 2 - 1
    labels = [int(yt[i]) for i in picks]
    T_train = den.num_train_timesteps
    ts = quick_timesteps(T_train, b.parta_steps) if b.parta_steps else None
    drawn = draw_digit(2) * 2 - 1
    return PartASetup(
        den=den, key="mnist", model_desc=model_summary(name), images=images,
        image_names=[f"test digit {l} (#{i})" for l, i in zip(labels, picks)], image_conds=labels,
        generic_cond=None, generic_desc="unconditional, the analogue of “a high quality photo”",
        forward_ts=[round(T_train * f) for f in (0.25, 0.5, 0.75)],
        cfg_conds=list(range(10)), cfg_names=[f"class {d}" for d in range(10)], guidance=5.0,
        drawn=drawn, drawn_cond=2,
        drawn_desc="A hand-drawn 2, drawn programmatically with PIL pen strokes (no tablet here), noised and "
                   "denoised toward class 2.",
        img2img_source=2, img2img_cond=8, img2img_desc=f"Test digit {labels[2]} pushed toward an 8",
        anagram_conds=(1, 7), anagram_desc=("1", "7"), hybrid_conds=(0, 1), hybrid_desc=("0", "1"),
        view_anagrams=MNIST_VIEW_ANAGRAMS, timesteps=ts, n_samples=b.parta_samples, n_illusions=4 if not quick else 2)


def write_parta_mnist_figures(out_dir, seed: int = 0, quick: bool = False, data_dir=None, progress: bool = True,
                              name: str = "ddpm_class", device="cpu") -> List[Figure]:
    """Part A on the shipped MNIST class-conditional model (or a note when it is not shipped)."""
    from ..mnist import list_pretrained

    if name not in list_pretrained():
        return [Figure("A", "Part A on MNIST", "Not rendered.",
                       note=f"The class-conditional MNIST DDPM `{name}` is not among the shipped weights.")]
    s = mnist_setup(name, quick, data_dir, device)
    return render_parta(s, out_dir, seed, progress)


# ----------------------------------------------------------------------------- IF
def _pick(avail: Sequence[str], wanted: Sequence[str], k: int, exclude=()) -> List[str]:
    """``k`` prompts: those of ``wanted`` that exist, then the rest of ``avail`` in sorted order."""
    out = [p for p in wanted if p in avail and p not in exclude]
    out += [p for p in sorted(avail) if p not in out and p not in exclude]
    if len(out) < k:
        raise ValueError(f"the IF sections need at least {k + 1} prompts besides the null prompt \"\" in the "
                         f"embeddings; got {sorted(avail)}")
    return out[:k]


def if_setup(stage1, embeds, stage2=None, device="cpu", quick: bool = False, image=None) -> PartASetup:
    """The Part-A setup on DeepFloyd IF (``load_if_stage``), prompts chosen from the embeddings file.

    ``image``: a path or PIL image to edit (default: a synthetic scene drawn with PIL).
    """
    from ..pipelines.loading import load_if_stage, load_image, load_prompt_embeds

    emb = load_prompt_embeds(embeds) if not isinstance(embeds, dict) else embeds
    if "" not in emb:
        raise ValueError('the prompt embeddings must include the null prompt "" (for classifier-free guidance)')
    den = load_if_stage(stage1, stage=1, device=device, prompt_embeds=emb)
    den2 = load_if_stage(stage2, stage=2, device=device, prompt_embeds=emb) if stage2 else None
    avail = [p for p in emb if p]
    generic = _pick(avail, ["a high quality photo"], 1)[0]
    others = [p for p in avail if p != generic] or avail
    C, H, W = den.sample_shape
    if image is None:
        img = draw_scene(H, C) * 2 - 1
        img_name = "a synthetic scene (drawn with PIL)"
    else:
        img = load_image(image, size=(H, W), channels=C)
        img_name = f"the image {image}" if isinstance(image, (str, Path)) else "the given image"
    ana = _pick(others, ["an oil painting of an old man", "an oil painting of people around a campfire"], 2)
    hyb = _pick(others, ["a lithograph of a skull", "a lithograph of waterfalls"], 2)
    target = _pick(others, ["a rocket ship", "a pencil"], 1)[0]
    cfg = _pick(others, ["a rocket ship", "an oil painting of a snowy mountain village", "a man wearing a hat",
                         "a photo of a dog"], min(4, len(others)))
    doodle = draw_digit(2, size=H).expand(1, C, H, W) * 2 - 1
    T_train = den.num_train_timesteps
    b = Budget.for_mode(quick)
    ts = quick_timesteps(T_train, b.parta_steps) if b.parta_steps else None
    return PartASetup(
        den=den, key="if", model_desc="DeepFloyd IF stage I", images=img, image_names=[img_name],
        image_conds=generic, generic_cond=generic, generic_desc=f"prompt “{generic}”",
        forward_ts=[250, 500, 750], cfg_conds=cfg, cfg_names=cfg, guidance=7.0, drawn=doodle, drawn_cond=generic,
        drawn_desc="A doodle drawn programmatically with PIL pen strokes.", img2img_source=0, img2img_cond=target,
        img2img_desc=f"{img_name} pushed toward “{target}”", anagram_conds=tuple(ana), anagram_desc=tuple(ana),
        hybrid_conds=tuple(hyb), hybrid_desc=tuple(hyb), timesteps=ts, n_samples=4 if not quick else 2,
        n_illusions=2 if not quick else 1, section="A-IF", stage2=den2, stage2_steps=5 if quick else 50)


def write_parta_if_figures(out_dir, if_stage1, embeds, if_stage2=None, device="cpu", seed: int = 0,
                           quick: bool = False, progress: bool = True, image=None) -> List[Figure]:
    """Part A with DeepFloyd IF (stage I, and stage II when given) into the "A-IF" section."""
    s = if_setup(if_stage1, embeds, if_stage2, device, quick, image)
    return render_parta(s, out_dir, seed, progress)
