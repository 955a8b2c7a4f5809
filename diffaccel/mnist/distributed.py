"""Running Part B work under ``torchrun``: which process this is, and sampling split across processes.

* :func:`rank_world` — ``(rank, world_size)``: from ``torch.distributed`` once a process group
  exists, from torchrun's environment (``RANK``, ``WORLD_SIZE``) before, ``(0, 1)`` when run plainly;
* :func:`local_device` — ``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) under torchrun;
* :func:`shard_range` / :func:`sample_distributed` — many digits sampled by several processes,
  with the result of one process bit for bit.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from ..errors import ArgumentError

__all__ = ["rank_world", "local_device", "shard_range", "sample_distributed"]


def rank_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: Union[str, torch.device]) -> torch.device:
    """``device``, with a bare ``cuda`` turned into this process's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and rank_world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def shard_range(n: int, batch_size: int, rank: int, world: int) -> Tuple[int, int]:
    """The sample indices ``[start, end)`` process ``rank`` of ``world`` computes out of ``n``.

    Shards are whole batches of ``batch_size``, contiguous, in rank order: every process then runs
    exactly the forwards (same batch composition and size) that one process runs. Per-sample noise
    alone would not give bit-equality: CPU convolution kernels pick their blocking by batch size,
    so a digit computed in a batch of another size can differ in the last bits.
    """
    for name, v, low in (("n", n, 0), ("batch_size", batch_size, 1), ("world", world, 1), ("rank", rank, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ArgumentError(f"{name} must be an int >= {low}, got {v!r}")
    if rank >= world:
        raise ArgumentError(f"rank must be below world ({world}), got {rank}")
    num_batches = -(-n // batch_size)
    start = min(n, rank * num_batches // world * batch_size)
    end = min(n, (rank + 1) * num_batches // world * batch_size)
    return start, end


def sample_distributed(model, labels: Optional[torch.Tensor] = None, n: Optional[int] = None, *,
                       scratch: Union[str, os.PathLike], batch_size: int = 512, progress: bool = False,
                       **sample_kw) -> Optional[torch.Tensor]:
    """:func:`diffaccel.mnist.sample` split over the processes of a ``torchrun`` job.

    Every process calls this with the same arguments. Process ``rank`` samples the indices
    :func:`shard_range` gives it (noise streams ``(seed, index)``, so the digits are those of
    one process at the same ``batch_size`` and thread count, bit for bit) and writes them to the
    shard file ``{scratch}.shard{rank}of{world}.safetensors`` (``scratch``: a path prefix on a
    filesystem every process sees, e.g. a hidden name next to the output). After a barrier,
    rank 0 reads every shard, removes them and returns all ``[n, 1, 28, 28]`` digits on the CPU;
    the other ranks return ``None``. ``labels`` (one per sample) or ``n`` as for ``sample``.
    Shards go through files and a gloo group (created here if none exists, and destroyed
    again): a few MB, once. Outside torchrun this is ``sample(...)``, returned on the CPU.
    """
    import torch.distributed as dist

    from .checkpoint import atomic_save_tensors, load_tensors
    from .sampling import sample

    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if n is not None and n != labels.numel():
            raise ArgumentError(f"n ({n}) must equal the number of labels ({labels.numel()}) or be None")
        n = labels.numel()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ArgumentError(f"n must be a positive int (or give labels), got {n!r}")

    def run(start: int, end: int, show: bool) -> torch.Tensor:
        if end <= start:
            return torch.empty(0, 1, 28, 28)
        lab = labels[start:end] if labels is not None else None
        return sample(model, labels=lab, n=None if lab is not None else end - start, batch_size=batch_size,
                      start_index=start, progress=show, **sample_kw).cpu()

    rank, world = rank_world()
    if world == 1:
        return run(0, n, progress)
    scratch = Path(scratch)
    if scratch.name in ("", ".", ".."):
        raise ArgumentError(f"scratch must be a path prefix such as 'out/.samples', got {os.fspath(scratch)!r}")
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")
    try:
        start, end = shard_range(n, batch_size, rank, world)
        num_batches = -(-n // batch_size)
        if rank == 0 and num_batches < world:
            warnings.warn(f"{n} samples make {num_batches} batch(es) of batch_size {batch_size} for {world} "
                          f"processes: {world - num_batches} will idle (use a smaller batch_size)", stacklevel=2)
        shards = [scratch.with_name(f"{scratch.name}.shard{r:04d}of{world:04d}.safetensors") for r in range(world)]
        scratch.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(shards[rank], {"samples": run(start, end, progress and rank == 0).contiguous()})
        dist.barrier()
        x = None
        if rank == 0:
            x = torch.cat([load_tensors(s)["samples"] for s in shards])
            for s in shards:
                s.unlink()
        dist.barrier()  # nobody leaves (and tears the group down) before rank 0 has read every shard
        return x
    finally:
        if own_group:
            dist.destroy_process_group()
