"""The FLYT / M-FLYT training loop (SPEC.md sections 2 and 3), in one readable function.

Per step: draw an upstream pool batch and one downstream batch per task (from (seed, step), or for a
streamed pool from the stream, whose state the checkpoints keep: either way a resumed run draws exactly
what an uninterrupted one does; ``flyt.training.upstream``); score the batch, w = softmax(scores); get the
exact meta-gradient dL_down/dlog w; step the scorer on < log_softmax(scores), sg(dL_down/dlog w) >; and,
with update_reference, move the reference model to theta' (and its downstream logit scale psi).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from flyt.errors import FlytError
from flyt.io.atomic import exclusive_lock, torch_save, write_text
from flyt.io.pool import PoolArrays
from flyt.io.tasks import load_task
from flyt.models.checkpoint import save_scorer
from flyt.models.mixing import ScoreMixer
from flyt.models.reference import LOGIT_SCALE_MAX, EmbeddingReference
from flyt.models.scoring_head import SwiGLUScorer
from flyt.progress import Progress
from flyt.training import distributed
from flyt.training.config import TrainConfig, dump
from flyt.training.downstream import TaskBatch
from flyt.training.inner_step import AdamWConfig, adamw_init, adamw_step, sgd_step
from flyt.training.kstep import kstep_meta
from flyt.training.meta_gradient import meta_gradient
from flyt.training.resume import check_resume, first_line, read_run_config, restore
from flyt.training.rounds import Rounds
from flyt.training.run_dir import LOCK_NAME, check_out, discard, first_missing, remove_run_leftovers
from flyt.training.schedule import cosine_lr
from flyt.training.upstream import open_upstream


def build_scorer(cfg: TrainConfig, pool, image_dim: int, text_dim: int) -> torch.nn.Module:
    """The scorer phi. ``pool``: M-FLYT's statistics source, a PoolArrays or an upstream (``score_statistics``)."""
    if cfg.mode == "flyt":
        s = cfg.scorer
        return SwiGLUScorer(image_dim, text_dim, s.hidden_dim, s.depth, s.cosine_init, s.init_noise)
    ranked = cfg.score_transform != "zscore"  # fitted on the pool's score columns: in memory only
    if ranked and getattr(pool, "streaming", False):
        raise FlytError(f"config key 'score_transform' {cfg.score_transform!r} is fitted on the pool's scores in "
                        f"memory; a streamed pool (pool_buffer) supports zscore only")
    if isinstance(pool, PoolArrays) or ranked:
        scores = pool.scores if isinstance(pool, PoolArrays) else pool.pool.scores
        return ScoreMixer.fit_statistics(cfg.score_columns, scores, clip=cfg.score_clip, transform=cfg.score_transform)
    return ScoreMixer(cfg.score_columns, *pool.score_statistics(), clip=cfg.score_clip)


def sample_task_batch(task, rng: np.random.Generator, size: int, dtype, comm=None) -> TaskBatch:
    comm = comm or distributed.Comm()
    n = len(task.train.labels)
    idx = rng.choice(n, size=min(size, n), replace=False)
    templates = rng.integers(0, len(task.templates), size=task.num_classes)  # one per class
    prompts = task.prompts[templates, np.arange(task.num_classes)]
    mine = comm.chunk(idx)  # data-parallel: this rank's part of the global batch
    return TaskBatch(
        images=torch.as_tensor(task.train.images[mine], dtype=dtype),
        labels=torch.as_tensor(task.train.labels[mine]),
        class_prompts=torch.as_tensor(prompts, dtype=dtype),
        size=len(idx) if comm.world > 1 else None,
    )


def build_reference(cfg: TrainConfig, image_dim: int, text_dim: int, device):
    """The reference model theta and its initial params (embedding heads or a whole open_clip CLIP)."""
    r = cfg.reference
    dtype = getattr(torch, cfg.dtype)
    if r.kind == "openclip":
        from flyt.models.openclip_reference import OpenCLIPReference

        bf16 = r.precision == "bf16" or (r.precision == "auto" and device.type == "cuda")
        torch.manual_seed(cfg.seed)  # random init is the same on every rank
        reference = OpenCLIPReference(r.model, r.weights, device=device, bf16=bf16)
        return reference, reference.init_params(dtype=dtype)
    reference = EmbeddingReference(image_dim, text_dim, r.embed_dim, r.init, r.logit_scale)
    return reference, reference.init_params(torch.Generator().manual_seed(cfg.seed), dtype=dtype)


class Checkpoints:
    """checkpoints/latest.pt every `every` steps, and step_XXXXXXX.pt every `keep_every` steps."""

    def __init__(self, run_dir: Path, every: int, keep_every: int):
        self.dir = run_dir / "checkpoints"
        self.every, self.keep_every = every, keep_every
        self.written: list[Path] = []  # by this process (what a failed fresh run removes)

    @property
    def latest(self) -> Path:
        return self.dir / "latest.pt"

    def maybe_save(self, step_done: int, total: int, make_state, force: bool = False) -> None:
        if not force and step_done % self.every and step_done != total and step_done % self.keep_every:
            return
        state = make_state()
        paths = [self.latest] + ([self.dir / f"step_{step_done:07d}.pt"] if step_done % self.keep_every == 0 else [])
        for path in paths:
            self.written.append(path)
            with _write_failure(path):
                torch_save(state, path)


@contextlib.contextmanager
def _write_failure(path: Path):
    """torch.save reports a full disk as a RuntimeError of its zip writer: make it the OSError it is."""
    try:
        yield
    except RuntimeError as exc:
        raise OSError(errno.EIO, f"cannot write it: is the disk full? ({first_line(exc)})", str(path)) from exc


def train(cfg: TrainConfig | Mapping, resume: bool = False, progress: bool | None = None) -> Path:
    """Train a FLYT (mode flyt) or M-FLYT (mode mflyt) scorer; returns the path of scorer.pt.

    ``cfg``: a TrainConfig, or a mapping of its keys (relative paths then resolve against the working
    directory). Either is validated here. A fresh run that fails before its first checkpoint (bad
    data, a full disk, every step skipped) leaves no run directory behind.
    """
    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, Mapping) else cfg.validated()
    run_dir = Path(cfg.out)
    checkpoints = Checkpoints(run_dir, cfg.checkpoint_every, cfg.keep_checkpoint_every)
    check_out(run_dir)
    for d in cfg.scores:  # read only for mode mflyt's columns: a wrong path must not pass unnoticed
        if not Path(d).is_dir():
            raise FlytError(f"config key 'scores': score directory {d} does not exist")
    if not resume and (checkpoints.latest.exists() or (run_dir / "scorer.pt").exists()):
        raise FlytError(f"{run_dir} already holds a run; pass --resume to continue it or choose another 'out'")
    if resume and not checkpoints.latest.exists():
        raise FlytError(f"--resume: no checkpoint in {checkpoints.dir}")
    created = first_missing(run_dir)
    writer = not resume and int(os.environ.get("RANK", "0")) == 0  # rank 0 writes a fresh run
    try:
        return _train(cfg, run_dir, checkpoints, resume, progress)
    except NoStepApplied:
        if writer:  # its checkpoints hold the untrained start: nothing worth resuming
            discard(run_dir, created, checkpoints.written)
        raise
    except BaseException:
        if writer and not checkpoints.latest.exists():  # nothing a --resume could continue
            discard(run_dir, created, checkpoints.written)
        raise


class NoStepApplied(FlytError):
    """Every step of the run was skipped: its checkpoints hold the untrained initial state."""


def _train(cfg: TrainConfig, run_dir: Path, checkpoints: Checkpoints, resume: bool, progress: bool | None) -> Path:
    with contextlib.ExitStack() as held:  # the run's lock and the pool stream's open files
        return _train_held(cfg, run_dir, checkpoints, resume, progress, held)


def _train_held(cfg: TrainConfig, run_dir: Path, checkpoints: Checkpoints, resume: bool, progress: bool | None,
                held: contextlib.ExitStack) -> Path:
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(cfg.seed)
    r = cfg.reference
    raw = r.kind == "openclip"  # the reference reads raw images and captions
    device = distributed.local_device(r.device) if raw else torch.device("cpu")
    # before the data is read: a resume with another config or a foreign checkpoint fails at once
    ckpt = check_resume(cfg, run_dir, checkpoints.latest, device) if resume else None
    comm = distributed.setup(device.type)
    if resume and comm.rank == 0:
        # one run at a time in a run directory; holding it, what a killed run left half-written is garbage
        held.enter_context(exclusive_lock(run_dir / LOCK_NAME, f"training run {run_dir}"))
        remove_run_leftovers(run_dir)
    comm.barrier()  # every rank has checked the run directory before rank 0 writes into it

    # Data: the pool's embeddings (and M-FLYT inputs), in memory or streamed (pool_buffer); tasks in memory.
    upstream = open_upstream(cfg)
    held.callback(upstream.close)
    image_dim, text_dim = upstream.dims
    rounds = Rounds(cfg, upstream)  # iterative FLYT's round boundaries (none unless iterative.round_steps)
    if raw:
        from flyt.training import raw_inputs

        pairs = raw_inputs.open_pool(r.pool_shards, upstream.uids)  # streaming: uids are checked per batch
        tasks = raw_inputs.load_raw_tasks(cfg.tasks)
    else:
        tasks = [load_task(t, image_dim=image_dim, text_dim=text_dim) for t in cfg.tasks]

    # Models: scorer phi, reference theta (+ its optimizer state), downstream logit scale psi.
    scorer = build_scorer(cfg, upstream, image_dim, text_dim).to(device, dtype)
    reference, params = build_reference(cfg, image_dim, text_dim, device)
    ref_opt = AdamWConfig(cfg.reference_lr, r.beta1, r.beta2, r.eps, r.weight_decay)
    step_fn = adamw_step if r.optimizer == "adamw" else sgd_step
    ref_state = adamw_init(params)
    psi = torch.nn.Parameter(torch.tensor(cfg.downstream_logit_scale, dtype=dtype, device=device))
    scorer_opt = torch.optim.AdamW(scorer.parameters(), lr=cfg.scorer_lr, weight_decay=cfg.scorer.weight_decay)
    psi_opt = torch.optim.Adam([psi], lr=cfg.downstream_scale_lr, betas=(0.9, 0.98), eps=1e-6)
    start = applied = 0

    metrics_path = run_dir / "metrics.jsonl"
    if ckpt is not None:
        params, ref_state = restore(ckpt, checkpoints.latest, scorer, scorer_opt, params, psi, psi_opt)
        upstream.restore(ckpt.get("stream"), str(checkpoints.latest))
        start = ckpt["step"]
        applied = ckpt.get("applied", start)  # checkpoints before issue 16 do not count skipped steps
        rounds.restore(ckpt)
        if comm.rank == 0:
            saved = read_run_config(run_dir / "config.yaml") or {}
            if (saved.get("steps"), saved.get("out")) != (cfg.steps, cfg.out):  # the keys a resume may change
                write_text(dump(cfg), run_dir / "config.yaml")
            _truncate_metrics(metrics_path, start)
    elif comm.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        held.enter_context(exclusive_lock(run_dir / LOCK_NAME, f"training run {run_dir}"))
        write_text(dump(cfg), run_dir / "config.yaml")
        write_text("", metrics_path)
    comm.barrier()

    def state_now(step_done: int) -> dict:
        stream = {"stream": upstream.state()} if upstream.streaming else {}  # where the pool stream stands
        return stream | rounds.state() | {
            "step": step_done,
            "applied": applied,
            "scorer": scorer.state_dict(),
            "scorer_opt": scorer_opt.state_dict(),
            "reference": params,
            "reference_state": ref_state,
            "psi": psi.detach().clone(),
            "psi_opt": psi_opt.state_dict(),
            "config": cfg.to_dict(),
        }

    if rounds.due(start):  # resumed with more 'steps' after a last step that closes a round: its transition
        params, ref_state, _ = rounds.transition(start, scorer, reference, params, ref_state, ref_opt, step_fn, dtype,
                                                 device)
    n = upstream.rows
    batch = min(cfg.upstream_batch, n)
    if batch < comm.world:
        raise FlytError(f"upstream_batch {batch} is smaller than the {comm.world} data-parallel processes")
    # progress: flyt.progress's show (None: a bar on a terminal only); the other ranks show nothing
    bar = Progress(cfg.steps, cfg.mode, unit="step", show=progress if comm.rank == 0 else False, initial=start)
    # only rank 0 writes metrics and checkpoints; the others hold an unused handle
    with open(metrics_path if comm.rank == 0 else os.devnull, "a") as metrics:
        for step in bar.iterate(range(start, cfg.steps)):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, step])
            if cfg.inner_steps > 1:  # K-step FLYT (training/kstep.py): K upstream batches, then the tasks'
                draws = [upstream.draw(rng, batch) for _ in range(cfg.inner_steps)]
                task_batches = [sample_task_batch(t, rng, cfg.downstream_batch, dtype, comm) for t in tasks]
                meta = kstep_meta(cfg, scorer, draws, task_batches, reference, params, ref_state, psi, ref_opt,
                                  step_fn, comm, dtype, device)
                log_w = meta.log_weights
            else:
                up = upstream.draw(rng, batch)  # the global batch; every rank keeps its contiguous chunk
                # the scorer's input: the pool's frozen embeddings
                emb_image = torch.as_tensor(comm.chunk(up.image), dtype=dtype, device=device)
                emb_text = torch.as_tensor(comm.chunk(up.text), dtype=dtype, device=device)
                if raw:  # the reference's input: the same examples' raw pixels and tokens, by uid
                    up_image, up_text = raw_inputs.upstream_inputs(reference, pairs, comm.chunk(up.uids), device)
                    task_batches = [raw_inputs.task_batch(reference, t, rng, cfg.downstream_batch, comm, device)
                                    for t in tasks]
                else:
                    up_image, up_text = emb_image, emb_text
                    task_batches = [sample_task_batch(t, rng, cfg.downstream_batch, dtype, comm) for t in tasks]

                # w = softmax(q_phi(x_B)) over the whole global batch (scores gathered before the softmax)
                if cfg.mode == "flyt":
                    scores = scorer(emb_image, emb_text)
                else:
                    scores = scorer(torch.as_tensor(comm.chunk(up.scores), device=device))
                log_w = torch.log_softmax(comm.gather_with_grad(scores, batch), dim=0)

                meta = meta_gradient(
                    reference, params, ref_state, psi, up_image, up_text, log_w, task_batches, ref_opt, step_fn,
                    comm=comm, chunk=r.chunk_size if raw else None,
                )

            # Scorer step: d/dphi < log_softmax(q_phi(x_B)), sg(dL_down/dlog w) > is the meta-gradient.
            lr = cosine_lr(step, cfg.scorer_lr, cfg.warmup_steps, cfg.steps)
            for group in scorer_opt.param_groups:
                group["lr"] = lr
            scorer_opt.zero_grad(set_to_none=True)
            if cfg.inner_steps > 1:
                meta.backward()  # sum over the K batches, one batch's scorer graph at a time
            else:
                (log_w * meta.grad_log_weights).sum().backward()
            comm.sum_grads(scorer)  # each rank back-propagated through its own chunk of the scores
            finite = bool(torch.isfinite(meta.grad_log_weights).all()) and all(
                torch.isfinite(p.grad).all() for p in scorer.parameters() if p.grad is not None
            ) and all(torch.isfinite(p).all() for p in meta.new_params.values())
            if finite:
                applied += 1
                scorer_opt.step()
                if cfg.update_reference:  # theta <- theta'; the Adam state advances once per step
                    params, ref_state = meta.new_params, meta.new_state
                    psi.grad = meta.grad_psi.to(dtype)
                    psi_opt.step()
                    with torch.no_grad():
                        psi.clamp_(0.0, LOGIT_SCALE_MAX)

            row = {
                "step": step + 1,
                "upstream_loss": meta.upstream_loss,
                "downstream_loss": meta.downstream_loss,
                "task_losses": dict(zip((t.name for t in tasks), meta.task_losses)),
                "scorer_lr": lr,
                "skipped": not finite,
                "weight_entropy": float(-(log_w.exp() * log_w).sum().detach()),
                "logit_scale": float(params["logit_scale"]),
                "downstream_logit_scale": float(psi.detach()),
                "seconds": time.perf_counter() - t0,
            }
            if cfg.mode == "mflyt":
                row["weights"] = scorer.weights()
            if rounds.ends_round(step + 1):  # iterative FLYT: re-score the pool, draw it, continue the reference
                params, ref_state, row["round"] = rounds.transition(step + 1, scorer, reference, params, ref_state,
                                                                    ref_opt, step_fn, dtype, device)
            if comm.rank == 0:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                # a checkpoint after every round's transition: a killed run resumes in the round it was in
                checkpoints.maybe_save(step + 1, cfg.steps, lambda done=step + 1: state_now(done), force="round" in row)
            bar.set_postfix(down=f"{meta.downstream_loss:.4f}", up=f"{meta.upstream_loss:.3f}")

    if applied == 0:
        raise NoStepApplied(
            f"no training step was applied: all {cfg.steps} steps had a non-finite meta-gradient or update "
            f"(check reference_lr and the logit scales); no scorer written"
        )
    if not all(bool(torch.isfinite(p).all()) for p in scorer.parameters()):
        raise FlytError(f"training diverged: the scorer's parameters are not finite after step {cfg.steps} "
                        f"(try a smaller scorer_lr); no scorer written, checkpoints kept in {checkpoints.dir}")
    out = run_dir / "scorer.pt"
    if comm.rank == 0:
        with _write_failure(out):
            save_scorer(out, cfg.mode, cfg.name, scorer.float().cpu(), train_config=cfg.to_dict())
    comm.barrier()
    comm.close()
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric rows written after the checkpoint (they will be recomputed)."""
    if not path.exists():
        write_text("", path)
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    write_text("".join(line + "\n" for line in keep), path)
