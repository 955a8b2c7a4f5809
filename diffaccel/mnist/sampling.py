"""Sampling the Part B models: DDPM (SPEC B2.3), CFG (B2.5), DDIM / strided, DPM-Solver++(2M),
UniPC, flow-matching Euler / Heun.

The loops are :mod:`diffaccel.samplers`; this module makes the UNet a model function for them
(guidance is a wrapper: the CPU's shared-work guided forward, or one batched ``[cond, uncond]``
forward whose CFG combine is fused with the update) and wraps a whole loop in a CUDA graph
where asked. Noise is drawn per sample
from a generator seeded by ``(seed, index)``, so a digit does not depend on the batch it is in
(up to float rounding: oneDNN may pick another convolution algorithm for another batch size,
which moves the last bits; a sharded run that keeps the batch size is bit-identical).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from .._checks import check_bool, check_callable, check_finite, check_int, check_optional_int, check_seed
from ..errors import ArgumentError, ArgumentTypeError
from ..functional import BACKENDS
from ..samplers import (DDPM_SAMPLERS, FLOW_SAMPLERS, Guided, flow_times, get_sampler, nfe, replay_cuda_graph,
                        sample_ddpm)
from .models import one_hot
from .pretrained import MNISTDiffusion

#: Samplers by model kind (:mod:`diffaccel.samplers`); the first of each is the default.
SAMPLERS = DDPM_SAMPLERS + FLOW_SAMPLERS
#: Device types whose sampling loops get all their noise drawn before the first step.
NOISE_UP_FRONT = ("cuda",)
#: How many sampling settings keep their CUDA graphs on the model (``MNISTDiffusion.clear_cuda_graphs``).
GRAPH_CACHE_SETTINGS = 4
#: Samples per guided forward (2x that many UNet rows): small enough that a chunk's activations
#: stay in the CPU caches between layers (a tuning knob: 16 measured fastest of 16 / 32 / 64 on the
#: CPU of the README's tables).
GUIDED_CHUNK = int(os.environ.get("DIFFACCEL_GUIDED_CHUNK", "16"))
#: ``compile=None`` compiles the guided UNet when samples x steps reaches this (64 digits x 300
#: steps does; the tests' tiny runs do not): compiling costs seconds once per model and pays back
#: over long runs (the README's MNIST table: first call vs warm).
AUTO_COMPILE_WORK = 10_000


_M32, _M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
#: Sample indices are 32-bit: ``start_index + n <= INDEX_LIMIT``.
INDEX_LIMIT = 2 ** 32
#: Flow models: at most this many solver steps (the schedule is a host list; DDPM models are bounded by T).
MAX_FLOW_STEPS = 100_000


def _splitmix64(z: int) -> int:
    """splitmix64's output function (Steele, Lea & Flood 2014): a bijection of 64-bit ints."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _fmix64(k: int) -> int:
    """MurmurHash3's 64-bit finalizer: another bijection, so a seed's high half is keyed by a
    function unrelated to the one that hashes ``(seed, index)``."""
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def stream_seed(seed: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` of run ``seed``: splitmix64 of the pair, folded to 32 bits.

    PyTorch's CPU generator (mt19937) keeps only 32 bits of its seed, so ``(seed, index)`` is
    mixed rather than packed: packing ``seed * 2**32 + index`` would drop ``seed`` entirely.
    ``seed`` is any int in ``[0, 2**64)``, ``index`` in ``[0, 2**32)``. Seeds below ``2**32`` hash
    ``seed << 32 | index``; the high 32 bits of a larger seed are mixed in by a second round
    (``splitmix64(z ^ fmix64(seed >> 32))``), so ``seed`` and ``seed + 2**32`` draw unrelated
    streams while seeds below ``2**32`` keep the streams (and the digits) they always had.
    """
    seed, index = int(seed), int(index)
    if not 0 <= seed < 2 ** 64:
        raise ArgumentError(f"seed must be an int in [0, 2**64), got {seed}")
    if not 0 <= index < INDEX_LIMIT:
        raise ArgumentError(f"the sample index must be in [0, 2**32), got {index} (start_index too large?)")
    z = _splitmix64((seed & _M32) << 32 | index)
    if seed >> 32:
        z = _splitmix64(z ^ _fmix64(seed >> 32))
    return (z ^ (z >> 32)) & _M32


class PerSampleNoise:
    """Independent N(0, I) streams, one per sample index, seeded by :func:`stream_seed`."""

    def __init__(self, seed: int, indices: Sequence[int], shape, device="cpu"):
        seed = check_seed(seed)
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

    def draw_steps(self, k: int) -> torch.Tensor:
        """The next ``k`` draws at once, ``[k, n, *shape]`` on the device: the same numbers as
        ``k`` calls of :meth:`draw` (a CPU generator's ``randn`` of ``k * m`` values equals ``k``
        draws of ``m`` when ``m`` is a multiple of 16, as 784 is). On CUDA the block is drawn
        into pinned memory and copied without blocking, so a sampling loop that reads it makes
        no host<->device transfer (and no synchronisation) per step and can be a CUDA graph.
        The block takes ``n * k * m * 4`` bytes on the device (a 1000-digit, 300-step DDPM batch:
        0.9 GB), which is why ``sample`` works in batches."""
        m = math.prod(self.shape)
        if m % 16:
            raise ValueError(f"draw_steps needs a multiple of 16 values per draw, got {m}")
        pin = self.device.type == "cuda"
        buf = torch.empty((len(self.gens), k, *self.shape), pin_memory=pin)
        for i, g in enumerate(self.gens):
            torch.randn((k, *self.shape), generator=g, out=buf[i])
        return buf.to(self.device, non_blocking=pin).transpose(0, 1).contiguous()


def ddpm_timesteps(num_train_timesteps: int, num_steps: Optional[int] = None) -> list:
    """Descending timestep indices: all of T-1..0, or ``num_steps`` (1..T) evenly strided ones ending at 0."""
    T = num_train_timesteps
    if num_steps is None:
        return list(range(T - 1, -1, -1))
    num_steps = check_int("num_steps", num_steps, min=1, max=T, what=f" (this DDPM model has T = {T} timesteps)")
    if num_steps == T:
        return list(range(T - 1, -1, -1))
    ts = torch.linspace(T - 1, 0, num_steps).round().long().tolist()
    return sorted(set(ts), reverse=True)


def _check_labels(labels) -> Optional[torch.Tensor]:
    """``labels`` (None, a sequence of ints or an integer tensor) as a 1-D int64 tensor."""
    if labels is None:
        return None
    expected = "a sequence of digits 0..9 (a list of ints or an integer tensor)"
    if isinstance(labels, (str, bytes)) or not (isinstance(labels, torch.Tensor) or hasattr(labels, "__len__")):
        raise ArgumentTypeError(f"labels must be {expected}, got {type(labels).__name__} {labels!r}")
    try:
        t = labels.detach() if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ArgumentTypeError(f"labels must be {expected}, got {labels!r}") from None
    if t.numel() == 0:
        raise ArgumentError("labels is empty: give at least one digit (or labels=None and n=...)")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ArgumentTypeError(f"labels must be {expected}, got {t.dtype} values {t.reshape(-1).tolist()[:10]}")
    if t.ndim > 1:
        raise ArgumentError(f"labels must be {expected} (1-D), got shape {tuple(t.shape)}")
    return t.long().reshape(-1)


def _labels_for(model: MNISTDiffusion, labels, n: Optional[int]) -> tuple:
    # bounded before anything is allocated for n samples (the labels below): indices are 32-bit
    n = check_optional_int("n", n, min=1, max=INDEX_LIMIT, what=" (how many digits; sample indices are 32-bit)")
    labels = _check_labels(labels)
    if labels is None:
        if n is None:
            raise ArgumentError("give labels (class-conditional) or n (how many digits)")
        labels = torch.arange(n) % 10 if model.conditioning == "class" else None
    else:
        if n is not None and n != labels.numel():
            raise ArgumentError(f"n={n} but {labels.numel()} labels were given")
        if model.conditioning != "class":
            raise ArgumentError(f"model {model.name!r} is not class-conditional; drop labels (use n=...)")
        if labels.min() < 0 or labels.max() > 9:
            raise ArgumentError(f"labels must be digits 0..9, got {labels.tolist()[:10]}")
        n = labels.numel()
    return labels, n


def check_sample_args(model, guidance_scale, num_steps, seed, sampler) -> Tuple[float, Optional[int], int, str]:
    """The arguments :func:`sample` and :func:`~diffaccel.mnist.evaluate.evaluate_generator` share,
    checked before any work: ``model`` a generative :class:`MNISTDiffusion`, ``guidance_scale``
    finite, ``num_steps`` None or an int in ``[1, T]`` (DDPM) / ``[1, MAX_FLOW_STEPS]`` (flow), ``seed`` an int
    in ``[0, 2**64)``, ``sampler`` one of the model kind's. Returns them normalised (the sampler
    resolved: ``None`` is the model's default)."""
    if not isinstance(model, MNISTDiffusion):
        raise ArgumentTypeError(f"model must be an MNISTDiffusion (from load_pretrained(name) or "
                                f"MNISTDiffusion.from_train_dir(path)), got {type(model).__name__}")
    if model.kind not in ("ddpm", "flow"):
        raise ArgumentError(f"model {model.name!r} is a one-step {model.kind}, not a generative model")
    guidance_scale = check_finite("guidance_scale", guidance_scale)
    if model.kind == "ddpm":
        T = model.num_timesteps
        num_steps = check_optional_int("num_steps", num_steps, min=1, max=T,
                                       what=f" (this DDPM model has T = {T} timesteps)")
    else:
        num_steps = check_optional_int("num_steps", num_steps, min=1, max=MAX_FLOW_STEPS, what=" (flow solver steps)")
    seed = check_seed(seed)
    if sampler is not None and not isinstance(sampler, str):
        raise ArgumentTypeError(f"sampler must be a string such as 'ddpm', got {type(sampler).__name__}")
    return guidance_scale, num_steps, seed, resolve_sampler(model, sampler)


def resolve_sampler(model: MNISTDiffusion, sampler: Optional[str]) -> str:
    """``sampler`` checked against the model's kind; ``None``: "ddpm" (DDPM models), "euler" (flow)."""
    if model.kind == "flow":
        if sampler is None:
            return "euler"
        if sampler not in FLOW_SAMPLERS:
            raise ArgumentError(f"model {model.name!r} is a flow-matching model: sampler must be one of "
                                f"{FLOW_SAMPLERS}, got {sampler!r} ({DDPM_SAMPLERS} are for DDPM models)")
        return sampler
    if sampler is None:
        return "ddpm"
    if sampler not in DDPM_SAMPLERS:
        raise ArgumentError(f"model {model.name!r} is a DDPM model: sampler must be one of {DDPM_SAMPLERS}, "
                            f"got {sampler!r} ({FLOW_SAMPLERS} are for flow-matching models)")
    return sampler


def solver_timesteps(num_train_timesteps: int, num_steps: int) -> list:
    """``num_steps`` evaluation timesteps for the multistep ODE solvers (DPM-Solver++, UniPC):
    ``num_steps + 1`` evenly spaced points from T-1 down to 0 without the last (diffusers'
    "linspace" spacing). Their final update lands on the clean image, so no model evaluation is
    spent at t = 0, where the strided DDPM/DDIM schedule (:func:`ddpm_timesteps`, the course's)
    evaluates."""
    T = int(num_train_timesteps)
    if num_steps >= T:
        return list(range(T - 1, -1, -1))
    ts = torch.linspace(T - 1, 0, num_steps + 1)[:-1].round().long().tolist()
    return sorted(set(ts), reverse=True)


def _schedule(model: MNISTDiffusion, num_steps: Optional[int], sampler: str = "ddpm") -> list:
    """DDPM: the timesteps to evaluate at, then -1 (the clean image); flow: times 0 .. 1."""
    if model.kind == "ddpm":
        if sampler in ("dpmpp_2m", "dpmpp_2m_sde", "unipc") and num_steps is not None:
            return solver_timesteps(model.num_timesteps, num_steps) + [-1]
        return ddpm_timesteps(model.num_timesteps, num_steps) + [-1]
    return flow_times(300 if num_steps is None else num_steps)


def _noise_draws(ts: list, sampler: str) -> int:
    """How many N(0, I) draws a sampling run takes after x_T (one per DDPM step with t > 0, one per
    SDE-DPM-Solver++ step that lands at t_prev >= 0)."""
    if sampler == "ddpm":
        return sum(1 for t in ts[:-1] if t > 0)
    return sum(1 for t in ts[1:] if t >= 0) if sampler == "dpmpp_2m_sde" else 0


def _model_fn(model: MNISTDiffusion, c: Optional[torch.Tensor], n: int, guidance_scale: float, guided: bool,
              shared: bool, compile: bool, bf16: bool):
    """The UNet as a sampler's model function ``fn(x, t)``, guidance included (a wrapper).

    CPU (compute-bound): :class:`~diffaccel.mnist.inference.GuidedUNet` returns the combined
    ``eps_u + g (eps_c - eps_u)`` sharing the class-independent work, in cache-sized chunks, into
    two alternating buffers. CUDA (launch-bound at MNIST sizes): one batched ``[cond, uncond]``
    forward handed on as :class:`~diffaccel.samplers.Guided`, combined inside the fused update.
    """
    dev = model.device

    def t_input(t):
        return model.time_input(torch.full((n,), t, device=dev))

    def autocast():  # bf16: the UNet under autocast; combine and update stay float32
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    if shared:
        net = model.guided_model(compile=compile)
        k = -(-n // -(-n // GUIDED_CHUNK))  # balanced chunks: at most two distinct sizes
        chunks = [(s, min(n, s + k)) for s in range(0, n, k)]
        bufs, turn = [], [0]

        def guided_fn(x, t):
            if not bufs:
                bufs.extend(torch.empty_like(x) for _ in range(2))
            eps = bufs[turn[0]]
            turn[0] ^= 1
            t_in = t_input(t)
            with autocast():
                for s, e in chunks:
                    eps[s:e] = net(x[s:e], t_in[s:e], c[s:e], guidance_scale)
            return eps
        return guided_fn
    net = model.inference_model(compile=compile)
    if guided:
        def batched_fn(x, t):
            t_in = t_input(t)
            cond = torch.cat([c, torch.zeros_like(c)])  # read from c each call: a CUDA graph's input
            with autocast():
                out = net(torch.cat([x, x]), torch.cat([t_in, t_in]), cond).float()
            return Guided(out[n:], out[:n], guidance_scale)  # (uncond, cond)
        return batched_fn

    def plain_fn(x, t):
        with autocast():
            return net(x, t_input(t), c).float()
    return plain_fn


def _run_sampler(model: MNISTDiffusion, sampler: str, fn, x: torch.Tensor, ts: list, noise, callback, progress: bool,
                 backend: str) -> torch.Tensor:
    """One call into :mod:`diffaccel.samplers`, in place on ``x``."""
    kw = dict(callback=callback, progress=progress, backend=backend, out=x)
    if model.kind == "flow":
        return get_sampler(sampler)(fn, x, ts, **kw)
    abar = model.alphas_cumprod.to(x.device)
    if sampler == "ddpm":
        return sample_ddpm(fn, x, ts, abar, noise=noise, variance="fixed_large", **kw)
    if sampler == "dpmpp_2m_sde":
        kw["noise"] = noise
    return get_sampler(sampler)(fn, x, ts, abar, **kw)


@torch.inference_mode()
def _sample_batch(model: MNISTDiffusion, labels, indices, guidance_scale, num_steps, seed, sampler,
                  callback, progress, backend, compile, precision, graphs: Optional[dict] = None):
    dev = model.device
    n = len(indices)
    ts = _schedule(model, num_steps, sampler)
    noise = PerSampleNoise(seed, indices, (1, 28, 28), dev)
    # On CUDA all the noise is drawn up front (pinned, one non-blocking copy): the loop then never
    # touches the host, which is what lets it run unsynchronised or as a CUDA graph.
    if dev.type in NOISE_UP_FRONT or graphs is not None:
        draws = noise.draw_steps(1 + _noise_draws(ts, sampler))
        x, zs = draws[0], draws[1:]
    else:
        x, zs = noise.draw(), noise
    guided = model.conditioning == "class" and labels is not None and guidance_scale != 1.0
    c = one_hot(labels, n, device=dev) if model.conditioning == "class" else None
    shared = guided and dev.type == "cpu"
    if compile is None:  # auto: compile where the one-off cost pays for itself
        compile = shared and n * nfe(sampler, len(ts) - 1) >= AUTO_COMPILE_WORK
    fn = _model_fn(model, c, n, guidance_scale, guided, shared, compile, precision == "bf16")
    if graphs is None:
        return _run_sampler(model, sampler, fn, x, ts, zs, callback, progress, backend).clamp_(0, 1)
    # CUDA graph: the whole loop captured once per batch size and replayed (a wrapper around the
    # loop); a later batch of the same size only copies its x_T, noise and labels into the graph's.
    inputs = {"x": x, "zs": zs if zs.numel() else None, "c": c}

    def warmup():
        for _ in range(2):
            fn(x, ts[0])

    out = replay_cuda_graph(graphs, n, lambda: _run_sampler(model, sampler, fn, x, ts, zs, None, False, backend),
                            inputs, warmup)
    return out.clamp(0, 1)


def sample(model: MNISTDiffusion, labels: Union[Sequence[int], torch.Tensor, None] = None, n: Optional[int] = None,
           guidance_scale: float = 5.0, num_steps: Optional[int] = None, seed: int = 0, *,
           sampler: Optional[str] = None, batch_size: int = 512, start_index: int = 0,
           callback: Optional[Callable[[dict], None]] = None, progress: bool = False,
           backend: str = "auto", compile: Optional[bool] = None, precision: str = "fp32",
           cuda_graph: bool = False) -> torch.Tensor:
    """Sample digits: a float tensor [N, 1, 28, 28] in [0, 1] on the model's device.

    Class-conditional models use CFG with ``guidance_scale`` (SPEC B2.5; ``labels`` default to
    ``0, 1, ..., 9, 0, ...``); time-conditioned models ignore it.

    ``sampler`` (:mod:`diffaccel.samplers`): for DDPM models ``"ddpm"`` (default; ancestral,
    SPEC B2.3), ``"ddim"``, ``"dpmpp_2m"`` (DPM-Solver++(2M)), ``"dpmpp_2m_sde"`` (its SDE form, for
    models whose ODE lags their SDE, e.g. ``ddpm_time``) or ``"unipc"`` (UniPC bh2, order 2);
    for flow-matching models ``"euler"`` (default) or ``"heun"``. ``num_steps`` is the number of
    solver steps: ``None`` runs all T DDPM steps (flow: 300), fewer stride the schedule
    (:func:`ddpm_timesteps`; the DPM-Solvers and UniPC: :func:`solver_timesteps`; flow: uniform
    times). Model evaluations per step: one, except Heun's
    two (``samplers.nfe``: Heun with n steps costs 2n - 1).

    Sample ``k`` uses the noise stream ``(seed, start_index + k)`` (:func:`stream_seed`): ``seed`` is
    any int in ``[0, 2**64)``, sample indices are 32-bit (``start_index + n <= 2**32``). Every
    argument is checked before any work (:func:`check_sample_args`; a wrong type raises
    :class:`~diffaccel.errors.ArgumentTypeError`, a value out of range
    :class:`~diffaccel.errors.ArgumentError`): ``n``, ``num_steps`` and ``batch_size`` are ints
    >= 1 (``num_steps`` <= T for DDPM models, <= :data:`MAX_FLOW_STEPS` for flow models),
    ``guidance_scale`` is finite. The UNet runs with BatchNorm
    folded and channels-last (:mod:`diffaccel.mnist.inference`). On the CPU, guidance is one
    forward per step that computes ``eps_u + g (eps_c - eps_u)`` sharing the class-independent work
    (:class:`~diffaccel.mnist.inference.GuidedUNet`: encoder, skip halves and head once; about
    22% fewer multiply-adds than two calls, same digits up to float32 rounding), run in chunks
    of :data:`GUIDED_CHUNK` samples; on CUDA it is one batched ``[cond, uncond]`` forward and the
    fused ``cfg_*`` step (the GPU is launch-bound at this size: fewer, larger kernels win).
    ``compile=True`` compiles the network (CPU guided path: inductor ``freezing=True``, falling back
    to eager with a warning where torch.compile fails); ``compile=None`` (default) compiles only big
    CPU jobs (:data:`AUTO_COMPILE_WORK` samples x model evaluations). ``precision="bf16"`` runs the
    UNet under bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX, and on GPUs; the digits
    change by bf16 rounding, the guidance combine, head and update stay float32).
    On CUDA the loop makes no host synchronisation per step (the noise is drawn up front);
    ``cuda_graph=True`` captures the whole loop as one CUDA graph per batch size, kept on the model,
    and replays it: the first call pays the capture, later calls with the same settings only copy
    their inputs in and replay (same digits; no ``callback``: nothing runs on the host in a replay).
    ``callback(info)`` gets ``i``, ``t``, ``t_prev``, ``x`` and ``x0_hat`` per step
    (:mod:`diffaccel.samplers`; the tensors are the loop's buffers: copy what you keep).
    """
    guidance_scale, num_steps, seed, sampler = check_sample_args(model, guidance_scale, num_steps, seed, sampler)
    labels, n = _labels_for(model, labels, n)
    batch_size = check_int("batch_size", batch_size, min=1)
    start_index = check_int("start_index", start_index, min=0, max=INDEX_LIMIT - n,
                            what=f" (sample indices are 32-bit: start_index + n <= 2**32, n = {n})")
    check_callable("callback", callback)
    check_bool("progress", progress)
    check_bool("cuda_graph", cuda_graph)
    if compile is not None:
        check_bool("compile", compile)
    if backend not in BACKENDS:
        raise ArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in ("fp32", "bf16"):
        raise ArgumentError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    graphs = None
    if cuda_graph:
        if model.device.type != "cuda":
            raise ArgumentError(f"cuda_graph=True needs the model on a CUDA device, it is on {model.device}")
        if callback is not None:
            raise ArgumentError("cuda_graph=True cannot call a callback per step (a graph replay runs no Python)")
        # Graphs live on the model, keyed by everything the capture bakes in (batch size inside):
        # a later call with the same settings only replays. The few most recent settings are kept.
        key = (num_steps, sampler, float(guidance_scale), precision, backend, compile, labels is not None)
        graphs = model._graphs.pop(key, None) or {}
        model._graphs[key] = graphs
        while len(model._graphs) > GRAPH_CACHE_SETTINGS:
            model._graphs.pop(next(iter(model._graphs)))
    outs = []
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        lab = labels[s:e] if labels is not None else None
        outs.append(_sample_batch(model, lab, range(start_index + s, start_index + e), float(guidance_scale),
                                  num_steps, seed, sampler, callback, progress, backend, compile, precision,
                                  graphs))
    return torch.cat(outs)


@torch.inference_mode()
def sample_naive(model: MNISTDiffusion, labels=None, guidance_scale: float = 5.0, seed: int = 0, *,
                 n: Optional[int] = None) -> torch.Tensor:
    """The straightforward course-style loop (two separate UNet calls per step for a class-conditional
    model, one for a time-conditioned model, which takes ``n`` instead of ``labels``; unfused update,
    fresh tensors every step) — the baseline the benchmarks compare :func:`sample` against.
    Same noise streams as :func:`sample`, so both give the same digits (on CUDA the noise is
    drawn up front, as :func:`sample` does, so both loops time the GPU work alone)."""
    from .. import reference as R

    if model.kind != "ddpm":
        raise ArgumentError(f"sample_naive is the course's DDPM loop; model {model.name!r} is a {model.kind} model")
    net, dev = model.model, model.device
    conditional = model.conditioning == "class"
    if conditional:
        if labels is None:
            raise ArgumentError("labels must be given for the class-conditional model "
                                f"{model.name!r} (one digit class per sample)")
        labels = torch.as_tensor(labels).long()
        n = labels.numel()
    else:
        n = check_int("n", n, min=1, what=" (how many digits; a time-conditioned model takes no labels)")
    T = model.num_timesteps
    noise = PerSampleNoise(seed, range(n), (1, 28, 28), dev)
    if dev.type in NOISE_UP_FRONT:
        draws = noise.draw_steps(T)
        x, zs = draws[0], draws[1:]
    else:
        x, zs = noise.draw(), None
    c = one_hot(labels, n, device=dev) if conditional else None
    abar = model.alphas_cumprod.to(dev)
    for t in range(T - 1, -1, -1):
        tt = torch.full((n,), t, device=dev)
        t_in = tt.float() / T
        if conditional:
            eps_c = net(x, t_in, c)
            eps_u = net(x, t_in, torch.zeros_like(c))
            eps = R.cfg_combine(eps_u, eps_c, guidance_scale)  # the reference's formula, unfused
        else:
            eps = net(x, t_in, None)
        if t > 0:
            z = noise.draw() if zs is None else zs[T - 1 - t]
        else:
            z = torch.zeros_like(x)
        x = R.ddpm_step(x, eps, abar, tt, tt - 1, noise=z, variance="fixed_large")
    return x.clamp(0, 1)
