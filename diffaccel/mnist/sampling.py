"""Sampling the Part B models: DDPM (SPEC B2.3), CFG (B2.5), DDIM / strided, flow-matching Euler.

Samplers are short loops over :mod:`diffaccel.functional`; guidance is one batched forward of
``[cond, uncond]`` per step and the CFG combine is fused with the update
(``functional.cfg_ddpm_step``), written in place into one buffer. Noise is drawn per sample
from a generator seeded by ``(seed, index)``, so a digit does not depend on the batch it is in
(up to float rounding: oneDNN may pick another convolution algorithm for another batch size,
which moves the last bits; a sharded run that keeps the batch size is bit-identical).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .. import functional as F
from .models import one_hot
from .pretrained import MNISTDiffusion

SAMPLERS = ("ddpm", "ddim")
#: Samples per guided forward (2x that many UNet rows): small enough that a chunk's activations
#: stay in the CPU caches between layers (measured on the 2-core EPYC: 16 beats 64 by ~10%).
GUIDED_CHUNK = int(os.environ.get("DIFFACCEL_GUIDED_CHUNK", "16"))
#: ``compile=None`` compiles the guided UNet when samples x steps reaches this (64 digits x 300
#: steps does; the tests' tiny runs do not): compiling costs ~10 s once per model, and saves ~10%.
AUTO_COMPILE_WORK = 10_000


def stream_seed(seed: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` of run ``seed`` (splitmix64 of the pair).

    PyTorch's CPU generator (mt19937) keeps only 32 bits of its seed, so ``(seed, index)`` is
    mixed rather than packed: packing ``seed * 2**32 + index`` would drop ``seed`` entirely.
    """
    z = ((seed & 0xFFFFFFFF) << 32 | (index & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return (z ^ (z >> 32)) & 0xFFFFFFFF


class PerSampleNoise:
    """Independent N(0, I) streams, one per sample index, seeded by :func:`stream_seed`."""

    def __init__(self, seed: int, indices: Sequence[int], shape, device="cpu"):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.gens = [torch.Generator().manual_seed(stream_seed(seed, int(i))) for i in indices]
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self._buf = torch.empty((len(self.gens), *self.shape))

    def draw(self, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        for i, g in enumerate(self.gens):
            torch.randn(self.shape, generator=g, out=self._buf[i])
        if out is None:
            return self._buf.to(self.device, copy=True)
        return out.copy_(self._buf)


def ddpm_timesteps(num_train_timesteps: int, num_steps: Optional[int] = None) -> list:
    """Descending timestep indices: all of T-1..0, or ``num_steps`` evenly strided ones ending at 0."""
    if num_steps is None or num_steps >= num_train_timesteps:
        return list(range(num_train_timesteps - 1, -1, -1))
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ts = torch.linspace(num_train_timesteps - 1, 0, num_steps).round().long().tolist()
    return sorted(set(ts), reverse=True)


def _labels_for(model: MNISTDiffusion, labels, n: Optional[int]) -> tuple:
    if labels is None:
        if n is None:
            raise ValueError("give labels (class-conditional) or n (how many digits)")
        labels = torch.arange(n) % 10 if model.conditioning == "class" else None
    else:
        labels = torch.as_tensor(labels).long().reshape(-1)
        if n is not None and n != labels.numel():
            raise ValueError(f"n={n} but {labels.numel()} labels were given")
        if model.conditioning != "class":
            raise ValueError(f"model {model.name!r} is not class-conditional; drop labels (use n=...)")
        if labels.numel() and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"labels must be digits 0..9, got {labels.tolist()[:10]}")
        n = labels.numel()
    return labels, n


@torch.inference_mode()
def _sample_batch(model: MNISTDiffusion, labels, indices, guidance_scale, num_steps, seed, sampler,
                  callback, progress, backend, compile, precision):
    dev = model.device
    bf16 = precision == "bf16"
    n = len(indices)
    noise = PerSampleNoise(seed, indices, (1, 28, 28), dev)
    x = noise.draw()
    guided = model.conditioning == "class" and labels is not None and guidance_scale != 1.0
    c = one_hot(labels, n, device=dev) if model.conditioning == "class" else None
    z, eps = torch.empty_like(x), torch.empty_like(x)
    if compile is None:  # auto: compile where the ~10 s it costs (once per model) pays for itself
        compile = guided and n * (num_steps or 300) >= AUTO_COMPILE_WORK
    if guided:  # one CFG forward sharing the class-independent work, in cache-sized chunks
        net = model.guided_model(compile=compile)
        k = -(-n // -(-n // GUIDED_CHUNK))  # balanced chunks: at most two distinct sizes
        chunks = [(s, min(n, s + k)) for s in range(0, n, k)]
    else:
        net = model.inference_model(compile=compile)

    def predict(x_in, t_in):
        # bf16: the UNet runs under autocast (oneDNN bf16 kernels); the update stays float32
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            if guided:  # eps = eps_u + g (eps_c - eps_u)
                for s, e in chunks:
                    eps[s:e] = net(x_in[s:e], t_in[s:e], c[s:e], guidance_scale)
                return eps
            return net(x_in, t_in, c).float()

    if model.kind == "ddpm":
        abar = model.alphas_cumprod.to(dev)
        ts = ddpm_timesteps(model.num_timesteps, num_steps)
        for i in tqdm(range(len(ts)), desc="sampling", disable=not progress, leave=False):
            t, t_prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
            t_in = model.time_input(torch.full((n,), t, device=dev))
            e = predict(x, t_in)
            if sampler == "ddim":
                F.ddim_step(x, e, abar, t, t_prev, out=x, backend=backend)
            else:
                zn = noise.draw(z) if t > 0 else None
                F.ddpm_step(x, e, abar, t, t_prev, noise=zn, variance="fixed_large", out=x, backend=backend)
            if callback is not None:
                callback({"i": i, "t": t, "x": x})
    elif model.kind == "flow":
        steps = num_steps or 300
        dt = 1.0 / steps
        for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
            t_in = torch.full((n,), i * dt, device=dev)
            F.euler_step(x, predict(x, t_in), dt, out=x)
            if callback is not None:
                callback({"i": i, "t": i * dt, "x": x})
    else:
        raise ValueError(f"model {model.name!r} is a one-step {model.kind}, not a generative model")
    return x.clamp_(0, 1)


def sample(model: MNISTDiffusion, labels: Union[Sequence[int], torch.Tensor, None] = None, n: Optional[int] = None,
           guidance_scale: float = 5.0, num_steps: Optional[int] = None, seed: int = 0, *,
           sampler: str = "ddpm", batch_size: int = 512, start_index: int = 0,
           callback: Optional[Callable[[dict], None]] = None, progress: bool = False,
           backend: str = "auto", compile: Optional[bool] = None, precision: str = "fp32") -> torch.Tensor:
    """Sample digits: a float tensor [N, 1, 28, 28] in [0, 1] on the model's device.

    Class-conditional models use CFG with ``guidance_scale`` (SPEC B2.5; ``labels`` default to
    ``0, 1, ..., 9, 0, ...``); time-conditioned models ignore it. ``num_steps=None`` runs all T
    DDPM steps (flow: 300 Euler steps); fewer gives strided DDPM (``sampler="ddpm"``) or DDIM.
    Sample ``k`` uses the noise stream ``(seed, start_index + k)``. The UNet runs with BatchNorm
    folded and channels-last (:mod:`diffaccel.mnist.inference`). With guidance it is one forward
    per step that computes ``eps_u + g (eps_c - eps_u)`` sharing the class-independent work
    (:class:`~diffaccel.mnist.inference.GuidedUNet`: encoder, skip halves and head once; about
    22% fewer multiply-adds than two calls, same digits up to float32 rounding), run in chunks
    of :data:`GUIDED_CHUNK` samples. ``compile=True`` compiles it (inductor, ``freezing=True``),
    falling back to eager with a warning where torch.compile fails; ``compile=None`` (default)
    compiles only big jobs (:data:`AUTO_COMPILE_WORK`). ``precision="bf16"`` runs the UNet under
    bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX, and on GPUs; the digits change by
    bf16 rounding, the guidance combine, head and update stay float32).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"guidance_scale must be a number, got {type(guidance_scale).__name__}")
    labels, n = _labels_for(model, labels, n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outs = []
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        lab = labels[s:e] if labels is not None else None
        outs.append(_sample_batch(model, lab, range(start_index + s, start_index + e), float(guidance_scale),
                                  num_steps, seed, sampler, callback, progress, backend, compile, precision))
    return torch.cat(outs)


@torch.inference_mode()
def sample_naive(model: MNISTDiffusion, labels, guidance_scale: float = 5.0, seed: int = 0) -> torch.Tensor:
    """The straightforward course-style loop (two separate UNet calls per step, unfused update,
    fresh tensors every step) — the baseline the benchmarks compare :func:`sample` against.
    Same noise streams as :func:`sample`, so both give the same digits."""
    from .. import reference as R

    net = model.model
    labels = torch.as_tensor(labels).long()
    n = labels.numel()
    noise = PerSampleNoise(seed, range(n), (1, 28, 28), model.device)
    x = noise.draw()
    c = one_hot(labels, n)
    abar = model.alphas_cumprod
    T = model.num_timesteps
    for t in range(T - 1, -1, -1):
        tt = torch.full((n,), t)
        t_in = tt.float() / T
        eps_c = net(x, t_in, c)
        eps_u = net(x, t_in, torch.zeros_like(c))
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        z = noise.draw() if t > 0 else torch.zeros_like(x)
        x = R.ddpm_step(x, eps, abar, tt, tt - 1, noise=z, variance="fixed_large")
    return x.clamp(0, 1)
