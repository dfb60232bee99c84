"""One raw-image FLYT step with a whole open_clip reference vs one plain CLIP training step.

    python benchmarks/raw_step.py                      # GPU: ViT-B-32, upstream 4096, downstream 3072
    python benchmarks/raw_step.py --fit                # halve both batches on out-of-memory until it fits
    python benchmarks/raw_step.py --tiny               # CPU smoke run: tiny registered ViT, small batches

FLYT step = scorer (SwiGLU on 2 x embed_dim frozen features) + the exact meta-gradient in SPEC.md's
efficient form (backward for g, downstream forward/backward through theta', one JVP through the towers,
second derivative through the loss head; math attention kernel) + the scorer's AdamW step.
Plain step = the same towers on the same upstream batch: CLIP loss, backward, torch AdamW step
(default attention kernels). Both under bf16 autocast on CUDA, fp32 on CPU. Inputs are synthetic
(random pixels and token ids): only time and memory are measured. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB -> GiB)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def inputs(ref, n: int, device, gen):
    size = ref.model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    pixels = torch.randn(n, 3, size, size, generator=gen).to(device)
    vocab = ref.model.vocab_size
    tokens = torch.randint(1, vocab - 2, (n, ref.context_length), generator=gen).to(device)
    return pixels, tokens


def flyt_step(ref, params, state, psi, scorer, scorer_opt, feats, up, tasks, opt, chunk):
    from flyt.training.meta_gradient import meta_gradient

    scores = scorer(*feats)
    log_w = torch.log_softmax(scores.float(), dim=0)
    meta = meta_gradient(ref, params, state, psi, up[0], up[1], log_w, tasks, opt, chunk=chunk)
    scorer_opt.zero_grad(set_to_none=True)
    (log_w * meta.grad_log_weights).sum().backward()
    scorer_opt.step()
    return meta


def plain_step(model, optimizer, up, bf16: bool):
    from flyt.models.losses import clip_loss

    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        image = model.encode_image(up[0], normalize=True)
        text = model.encode_text(up[1], normalize=True)
        loss = clip_loss(image.float(), text.float(), model.logit_scale.exp())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def run(model: str, upstream: int, downstream: int, classes: int, repeats: int, device, chunk=None) -> dict:
    from flyt.models.openclip_reference import OpenCLIPReference
    from flyt.models.scoring_head import SwiGLUScorer
    from flyt.training.downstream import TaskBatch
    from flyt.training.inner_step import AdamWConfig, adamw_init

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    bf16 = device.type == "cuda"
    ref = OpenCLIPReference(model, device=device, bf16=bf16)
    params = ref.init_params()
    state = adamw_init(params)
    state["step"] = 10  # a warm optimizer: bias corrections as mid-run
    psi = torch.tensor(math.log(1 / 0.07), device=device)
    dim = int(ref.model.text_projection.shape[1])
    scorer = SwiGLUScorer(dim, dim, None, 1, True, 0.01).to(device)
    scorer_opt = torch.optim.AdamW(scorer.parameters(), lr=1e-3)
    feats = [torch.nn.functional.normalize(torch.randn(upstream, dim, generator=gen), dim=-1).to(device) for _ in range(2)]
    up = inputs(ref, upstream, device, gen)
    img, _ = inputs(ref, downstream, device, gen)
    _, prompts = inputs(ref, classes, device, gen)
    tasks = [TaskBatch(img, torch.randint(0, classes, (downstream,), generator=gen).to(device), prompts)]
    opt = AdamWConfig(lr=5e-5)

    result = {"model": model, "device": torch.cuda.get_device_name(device) if bf16 else "cpu",
              "upstream": upstream, "downstream": downstream, "classes": classes, "bf16": bf16, "chunk": chunk}
    reset_peak(device)
    result["flyt_step_s"] = timed(lambda: flyt_step(ref, params, state, psi, scorer, scorer_opt, feats, up, tasks, opt, chunk),
                                  device, repeats)
    result["flyt_peak_gib"] = peak_gib(device)

    # the plain CLIP step: a fresh module (the reference's module holds no trainable state)
    plain = ref.model
    plain.requires_grad_(True)
    optimizer = torch.optim.AdamW(plain.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    params = state = None  # free the FLYT copies: the plain step's peak is its own
    reset_peak(device)
    try:
        result["plain_step_s"] = timed(lambda: plain_step(plain, optimizer, up, bf16), device, repeats)
    except torch.cuda.OutOfMemoryError:  # a plain step at this batch does not fit one GPU either
        result["plain_step_s"] = result["plain_peak_gib"] = None
        return result
    result["plain_peak_gib"] = peak_gib(device)
    result["time_ratio"] = result["flyt_step_s"] / result["plain_step_s"]
    result["memory_ratio"] = result["flyt_peak_gib"] / max(result["plain_peak_gib"], 1e-9)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--upstream", type=int, default=4096)
    p.add_argument("--downstream", type=int, default=3072)
    p.add_argument("--classes", type=int, default=1000, help="class prompts of the downstream task (ImageNet: 1000)")
    p.add_argument("--chunk", type=int, default=None, help="FLYT: upstream rows per tower pass (reference.chunk_size)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--fit", action="store_true", help="on CUDA out-of-memory, halve both batches and retry")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny ViT, upstream 64, downstream 48, 10 classes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    if args.tiny:
        from flyt.models.openclip_reference import TINY_MODEL

        args.model, args.upstream, args.downstream, args.classes = TINY_MODEL, 64, 48, 10
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available() and not args.tiny)
    device = torch.device("cuda" if use_cuda else "cpu")
    up, down = args.upstream, args.downstream
    while True:
        try:
            print(json.dumps(run(args.model, up, down, args.classes, args.repeats, device, args.chunk)), flush=True)
            return 0
        except torch.cuda.OutOfMemoryError:
            print(json.dumps({"model": args.model, "upstream": up, "downstream": down, "error": "out of memory"}), flush=True)
            if not args.fit or up < 2:
                return 1
            up, down = up // 2, max(1, down // 2)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
