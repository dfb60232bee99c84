"""Test helpers of tests/test_kstep.py that spawned processes import (kept light: torch and the
K-step math only, so each data-parallel rank starts fast)."""

import math

import torch

from flyt.models.reference import EmbeddingReference
from flyt.training.downstream import TaskBatch
from flyt.training.inner_step import AdamWConfig
from flyt.training.unrolled import InnerBatch, unrolled_meta_gradient

D = torch.float64
N, DIM = 8, 5
OPT = AdamWConfig(lr=1e-2)


def problem(K, seed=0):
    """A reference with a warm AdamW state (moments of earlier steps), K upstream batches, two tasks."""
    g = torch.Generator().manual_seed(seed)
    ref = EmbeddingReference(DIM, DIM, init="random")
    params = ref.init_params(g, dtype=D)
    state = {"step": 3,
             "m": {k: 1e-2 * torch.randn(v.shape, generator=g, dtype=D) for k, v in params.items()},
             "v": {k: 1e-3 * torch.rand(v.shape, generator=g, dtype=D) for k, v in params.items()}}
    batches = [(torch.randn(N, DIM, generator=g, dtype=D), torch.randn(N, DIM, generator=g, dtype=D),
                torch.log_softmax(torch.randn(N, generator=g, dtype=D), 0)) for _ in range(K)]
    tasks = [TaskBatch(torch.randn(7, DIM, generator=g, dtype=D), torch.randint(0, 3 + k, (7,), generator=g),
                       torch.randn(3 + k, DIM, generator=g, dtype=D)) for k in range(2)]
    psi = torch.tensor(math.log(1 / 0.07), dtype=D)
    return ref, params, state, psi, batches, tasks


def data_parallel_rank(rank, world, port, out):
    """One gloo rank of test_kstep.py::test_data_parallel_matches_one_process: its rows of every batch and
    task; rank 0 saves the gradients to ``out``."""
    import torch.distributed as dist

    from flyt.training.distributed import TorchComm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ref, params, state, psi, batches, tasks = problem(3, seed=4)
        comm = TorchComm()
        mine = [InnerBatch(comm.chunk(i), comm.chunk(t), lw) for i, t, lw in batches]
        task_chunks = [TaskBatch(comm.chunk(t.images), comm.chunk(t.labels), t.class_prompts, size=len(t.labels))
                       for t in tasks]
        got = unrolled_meta_gradient(ref, params, state, psi, mine, task_chunks, OPT, comm=comm, truncate=2)
        if rank == 0:
            torch.save({"grads": got.grad_log_weights, "params": got.params[-1], "psi": got.grad_psi}, out)
    finally:
        dist.destroy_process_group()


