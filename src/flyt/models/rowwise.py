"""Per-row arithmetic whose result for a row is the same bits whatever else shares the call.

Every scorer promises that a row's score depends on that row (and the fitted state) alone, bit for
bit: not on the batch it came in, the batch size, the shard layout, the thread count or the engine.
Plain numpy/torch code breaks that in three ways, each measured on this project's stack (numpy 2 with
OpenBLAS, torch 2 with MKL, AVX-512):

- a matrix product's kernel and blocking depend on its shape, so a row's result changes with the
  number of rows in the call; OpenBLAS's dgemm even changed a row's bits when only its position among
  the rows changed; MKL's one-column product (GEMV) changed them with the thread count;
- torch's elementwise loops finish each thread's range with the scalar function for the last
  (n mod 32) elements, and the scalar ``silu`` differs from the SIMD one in the last bit: an
  element's result depends on where the array, or a thread's share of it, ends;
- ``np.einsum``'s SIMD sum depends on the memory alignment of the row (seen at length 10230).

The construction used by every scorer:

1. Fixed-shape blocks. Rows are processed in blocks of exactly ``block`` rows (``BLOCK_ROWS`` = 1024
   unless a caller fixes another size), the last block zero-padded (``padded``). Every matrix product
   and every torch op then sees one shape, whose element count is a multiple of every SIMD width and
   microkernel tile, so each row runs through the same instructions wherever it sits in its block.
2. One thread per block. Each block is computed with one torch intra-op thread (``block_map``), so
   no work split depends on the thread count; parallelism comes from computing several blocks at once
   on a thread pool, which changes nothing inside a block. With one thread and a fixed shape, MKL's
   per-row results were bit-identical under every permutation of a block's rows for all shapes the
   scorers use (float32 and float64, 1 to 10230 columns). numpy's OpenBLAS products are not used.
3. Reductions of a row with one vector (dot products, norms) are numpy ``add.reduce`` over the
   contiguous last axis of float64 products (``row_dot``): pairwise summation indexed from the row's
   start, one thread, no BLAS, no alignment dependence. Products of float32 values are exact in
   float64, so for float32 inputs only the summation rounds.

Elementwise numpy and torch arithmetic (+, *, /, sqrt) is exactly rounded, so it needs nothing more.
The guarantee is for one machine type and library build: another CPU or MKL version may round
differently (but equally for every layout).

Cost: the padding of the last block of each batch (at most ``block`` - 1 rows), a thread pool
instead of torch's intra-op threads, and float64 row sums where a BLAS GEMV was used. Measured on
100k DataComp-shaped rows (768-d, 2 shared cores, best of 3 against the code before): scoring rows/s
unchanged within noise for clip_score, normsim, negclip_loss and FLYT (compute alone and end to end);
the classifier's scoring alone 0.5 M instead of 0.9 M rows/s, M-FLYT's 30-40 M instead of 40-58 M,
both far above the rate ``flyt score`` reads rows at (the end-to-end rates did not move).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch

BLOCK_ROWS = 1024

R = TypeVar("R")


@contextmanager
def one_thread() -> Iterator[None]:
    """torch (and MKL under it) runs with one intra-op thread in this thread; restored on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def block_spans(n: int, block: int = BLOCK_ROWS) -> list[tuple[int, int]]:
    """[start, stop) of each block of ``block`` rows covering n rows (the last may be short)."""
    return [(lo, min(lo + block, n)) for lo in range(0, n, block)]


def block_map(fn: Callable[[int, int], R], n: int, block: int = BLOCK_ROWS, threads: int | None = None) -> list[R]:
    """``[fn(lo, hi) for each block]`` in block order, every call under ``one_thread`` and without
    autograd (grad mode is per thread, so the caller's ``no_grad`` would not reach the pool).

    Blocks run on up to ``threads`` threads (default: torch's intra-op thread count); since each block
    is computed by one thread alone, the results do not depend on how many there are.
    """
    spans = block_spans(n, block)
    threads = min(torch.get_num_threads() if threads is None else threads, len(spans))

    def run(span: tuple[int, int]) -> R:
        with one_thread(), torch.no_grad():
            return fn(*span)

    if threads <= 1:
        return [run(s) for s in spans]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(run, spans))


def padded(x, lo: int, hi: int, block: int = BLOCK_ROWS, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows [lo, hi) of ``x`` as a (block, ...) tensor of ``dtype``, zero rows after them."""
    rows = np.asarray(x[lo:hi])
    out = torch.zeros((block,) + rows.shape[1:], dtype=dtype)
    out[: hi - lo] = torch.from_numpy(np.ascontiguousarray(rows)).to(dtype)
    return out


def row_dot(a, b) -> np.ndarray:
    """float64 dot product of each row of ``a`` (n, d) with the same row of ``b`` or with a vector (d,).

    The products are formed in float64 and summed by ``np.add.reduce`` along each row on its own.
    """
    prod = np.multiply(a, b, dtype=np.float64, order="C")  # cast on the fly: exact, no float64 copies
    return np.add.reduce(prod, axis=-1)


def row_norm(a) -> np.ndarray:
    """float64 L2 norm of each row."""
    return np.sqrt(row_dot(a, a))
