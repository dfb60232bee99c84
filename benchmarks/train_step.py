"""One FLYT training step at the paper's sizes, in embedding mode, on this machine.

Sizes (SPEC.md / issue 2): upstream batch 4096, one downstream task of 3072 images and 1000 classes,
768-d image and 768-d text embeddings (DataComp's L/14 space), SwiGLU scorer over 1536-d (h = 1536).

Reports: steps/s and peak memory (RSS) of the FLYT step; its matmul FLOPs (torch FlopCounterMode)
and achieved FLOP/s as a fraction of this machine's measured float32 matmul FLOP/s; and the ratio of
one FLYT step to one plain weighted-CLIP step of the same reference model plus one forward and
backward of the scorer on the same batch.

    python benchmarks/train_step.py [--upstream 4096 --downstream 3072 --classes 1000 --dim 768 --repeats 7]

K-step FLYT (issue 15): ``--inner-steps 1,2,4,8`` runs, for each K in a fresh process, the training
loop's scorer step with K inner steps (K = 1: ``meta_gradient``; K > 1: ``flyt.training.kstep``) on K
distinct upstream batches, and reports its time (best of ``--repeats`` after one warm-up call) and time
per inner step, and its memory: the process's peak RSS (``ru_maxrss``), and the step's peak RSS delta
= peak RSS minus the RSS once the data (all K upstream batches), the models and the optimizers exist.

    python benchmarks/train_step.py --inner-steps 1,2,4,8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from flyt.models.losses import weighted_clip_loss
from flyt.models.reference import EmbeddingReference
from flyt.models.scoring_head import SwiGLUScorer
from flyt.training.downstream import TaskBatch
from flyt.training.inner_step import AdamWConfig, adamw_init, adamw_step
from flyt.training.kstep import kstep_meta
from flyt.training.meta_gradient import meta_gradient


def make_problem(args):
    g = torch.Generator().manual_seed(0)
    d = args.dim
    up_img = F.normalize(torch.randn(args.upstream, d, generator=g), dim=-1)
    up_txt = F.normalize(torch.randn(args.upstream, d, generator=g), dim=-1)
    task = TaskBatch(
        F.normalize(torch.randn(args.downstream, d, generator=g), dim=-1),
        torch.randint(0, args.classes, (args.downstream,), generator=g),
        F.normalize(torch.randn(args.classes, d, generator=g), dim=-1),
    )
    return up_img, up_txt, [task]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", type=int, default=4096)
    p.add_argument("--downstream", type=int, default=3072)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner-steps", help="K-step sweep: comma-separated K values, each measured in a fresh process")
    p.add_argument("--one-k", type=int, help=argparse.SUPPRESS)  # the sweep's child: measure this K
    args = p.parse_args()
    torch.manual_seed(0)
    if args.inner_steps:
        return kstep_sweep(args)
    if args.one_k:
        return print(json.dumps(measure_k(args, args.one_k)))

    up_img, up_txt, tasks = make_problem(args)
    reference = EmbeddingReference(args.dim, args.dim)
    params = reference.init_params()
    state = adamw_init(params)
    psi = torch.tensor(2.65926)
    opt = AdamWConfig()
    scorer = SwiGLUScorer(args.dim, args.dim)
    scorer_opt = torch.optim.AdamW(scorer.parameters(), lr=1e-3)

    def flyt_step():
        log_w = torch.log_softmax(scorer(up_img, up_txt), 0)
        meta = meta_gradient(reference, params, state, psi, up_img, up_txt, log_w, tasks, opt)
        scorer_opt.zero_grad()
        (log_w * meta.grad_log_weights).sum().backward()
        scorer_opt.step()

    def plain_step():
        """Weighted-CLIP step of the same reference (forward, backward, AdamW) + scorer fwd/bwd."""
        log_w = torch.log_softmax(scorer(up_img, up_txt), 0)
        theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = weighted_clip_loss(
            reference.encode_image(theta, up_img), reference.encode_text(theta, up_txt),
            theta["logit_scale"].exp(), log_w.detach(),
        )
        grads = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))
        with torch.no_grad():
            adamw_step({k: v.detach() for k, v in theta.items()}, grads, state, opt)
        scorer_opt.zero_grad()
        log_w.sum().backward()
        scorer_opt.step()

    def timed_once(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    matmul = lambda: torch.mm(a, b)  # noqa: E731

    with FlopCounterMode(display=False) as counter:
        flyt_step()
    flyt_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        plain_step()
    plain_flops = counter.get_total_flops()

    # Interleaved rounds, best of each: this VM's speed drifts by tens of percent from minute to
    # minute, and interleaving exposes the three measurements to the same drift.
    best = {"matmul": float("inf"), "flyt": float("inf"), "plain": float("inf")}
    for _ in range(args.repeats):
        best["matmul"] = min(best["matmul"], timed_once(matmul))
        best["flyt"] = min(best["flyt"], timed_once(flyt_step))
        best["plain"] = min(best["plain"], timed_once(plain_step))
    peak_flops = 2 * 4096**3 / best["matmul"]
    flyt_s, plain_s = best["flyt"], best["plain"]
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {
        "sizes": vars(args),
        "threads": torch.get_num_threads(),
        "matmul_gflops_per_s": peak_flops / 1e9,
        "flyt_step_s": flyt_s,
        "flyt_steps_per_s": 1 / flyt_s,
        "flyt_step_gflop": flyt_flops / 1e9,
        "flyt_achieved_gflops_per_s": flyt_flops / flyt_s / 1e9,
        "flyt_fraction_of_matmul_peak": flyt_flops / flyt_s / peak_flops,
        "plain_step_s": plain_s,
        "plain_step_gflop": plain_flops / 1e9,
        "ratio_flyt_to_plain": flyt_s / plain_s,
        "peak_rss_gib": peak_rss_gib,
    }
    print(json.dumps(result, indent=2))



def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_k(args, K: int) -> dict:
    """One K in this process: the loop's scorer step on K upstream batches (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    d = args.dim
    draws = [SimpleNamespace(uids=list(range(args.upstream)), scores=None,
                             image=F.normalize(torch.randn(args.upstream, d, generator=g), dim=-1).numpy(),
                             text=F.normalize(torch.randn(args.upstream, d, generator=g), dim=-1).numpy())
             for _ in range(K)]
    _, _, tasks = make_problem(args)
    reference = EmbeddingReference(d, d)
    params = reference.init_params()
    state = adamw_init(params)
    psi = torch.tensor(2.65926)
    opt = AdamWConfig()
    scorer = SwiGLUScorer(d, d)
    scorer_opt = torch.optim.AdamW(scorer.parameters(), lr=1e-3)
    cfg = SimpleNamespace(mode="flyt", inner_steps=K, truncate=None, reference_advance=None)

    class Comm:  # one process
        rank, world = 0, 1
        chunk = staticmethod(lambda x, n=None: x)
        gather = gather_with_grad = staticmethod(lambda x, n: x)
        sum = staticmethod(lambda tensors: tensors)

    def step():
        scorer_opt.zero_grad()
        if K == 1:  # the loop's one-step path
            image, text = torch.as_tensor(draws[0].image), torch.as_tensor(draws[0].text)
            log_w = torch.log_softmax(scorer(image, text), 0)
            meta = meta_gradient(reference, params, state, psi, image, text, log_w, tasks, opt)
            (log_w * meta.grad_log_weights).sum().backward()
        else:
            kstep_meta(cfg, scorer, draws, tasks, reference, params, state, psi, opt, adamw_step, Comm(),
                       torch.float32, "cpu").backward()
        scorer_opt.step()

    base = rss_bytes()
    times = []
    for _ in range(args.repeats + 1):  # the first call warms up (lazy imports, allocator)
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    best = min(times[1:])
    return {"K": K, "step_s": best, "per_inner_step_s": best / K, "peak_rss_gib": peak / 2**30,
            "step_peak_delta_gib": (peak - base) / 2**30, "rss_before_step_gib": base / 2**30,
            "upstream_batches_gib": K * 2 * args.upstream * d * 4 / 2**30, "threads": torch.get_num_threads()}


def kstep_sweep(args) -> None:
    ks = [int(k) for k in args.inner_steps.split(",")]
    rows = []
    for K in ks:
        cmd = [sys.executable, __file__, "--one-k", str(K), "--upstream", str(args.upstream), "--downstream",
               str(args.downstream), "--classes", str(args.classes), "--dim", str(args.dim), "--repeats",
               str(args.repeats)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        print(json.dumps(rows[-1]), flush=True)
    one = next((r for r in rows if r["K"] == 1), None)
    if one:
        for r in rows:
            print(f"K={r['K']}: {r['per_inner_step_s']:.2f} s per inner step ({r['step_s']:.2f} s a step), "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB = {r['peak_rss_gib'] / one['peak_rss_gib']:.2f}x K=1, "
                  f"step's delta {r['step_peak_delta_gib']:.2f} GiB = "
                  f"{r['step_peak_delta_gib'] / one['step_peak_delta_gib']:.2f}x K=1")


if __name__ == "__main__":
    main()
