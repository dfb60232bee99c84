"""Data-parallel FLYT over ``torchrun`` (gloo on CPU, nccl on GPU).

Every rank draws the same global batch (the draw depends on (seed, step) only) and keeps its own
contiguous chunk of it. What crosses ranks:
- the scores, gathered before the softmax, so w = softmax over the whole global batch;
- the reference's upstream features and their tangents J_e v, gathered, so the weighted CLIP loss
  sees every pair of the global batch (like open_clip's gather_with_grad);
- gradients (the reference's g, v and the scorer's), summed.
With one process every collective is the identity, so the single-process path is unchanged.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def chunk_sizes(n: int, world: int) -> list[int]:
    """Sizes of the contiguous per-rank chunks of an n-row global batch (np.array_split's)."""
    return [len(c) for c in np.array_split(np.arange(n), world)]


class Comm:
    """The collectives the FLYT step needs. This base class is one process: all identities."""

    rank = 0
    world = 1

    def chunk(self, x, n: int | None = None):
        """This rank's contiguous rows of a global array/tensor."""
        n = len(x) if n is None else n
        sizes = chunk_sizes(n, self.world)
        start = sum(sizes[: self.rank])
        return x[start : start + sizes[self.rank]]

    def gather(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's chunk (dim 0) into the n-row global tensor (no gradient)."""
        return x

    def gather_with_grad(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Like gather, but gradients flow into this rank's own chunk (other chunks are constants)."""
        return x

    def sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum each tensor over ranks."""
        return tensors

    def sum_grads(self, module: torch.nn.Module) -> None:
        """Sum the .grad of a module's parameters over ranks (in place)."""

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class TorchComm(Comm):
    """torch.distributed collectives over an initialised process group."""

    def __init__(self):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def gather(self, x, n):
        sizes = chunk_sizes(n, self.world)
        pad = max(sizes)
        buf = torch.zeros((pad, *x.shape[1:]), dtype=x.dtype, device=x.device)
        buf[: len(x)] = x.detach()
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def gather_with_grad(self, x, n):
        full = self.gather(x, n)
        sizes = chunk_sizes(n, self.world)
        start = sum(sizes[: self.rank])
        return torch.cat([full[:start], x, full[start + len(x) :]])

    def sum(self, tensors):
        if not tensors:
            return tensors
        # one flat all_reduce instead of one per tensor
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        out, pos = [], 0
        for t in tensors:
            out.append(flat[pos : pos + t.numel()].view_as(t))
            pos += t.numel()
        return out

    def sum_grads(self, module):
        params = [p for p in module.parameters() if p.grad is not None]
        for p, g in zip(params, self.sum([p.grad for p in params])):
            p.grad.copy_(g)

    def barrier(self):
        dist.barrier()

    def close(self):
        dist.destroy_process_group()


def setup(device_type: str = "cpu") -> Comm:
    """A TorchComm when started by torchrun with WORLD_SIZE > 1, else the one-process Comm."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Comm()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return TorchComm()


def local_device(kind: str = "auto") -> torch.device:
    """cuda:LOCAL_RANK when CUDA is there (and kind allows it), else cpu."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
