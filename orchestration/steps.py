"""The step loop of one worker: batches in, DeepSpeed steps, metrics, evaluation, checkpoints.

Metrics are reduced over ranks every `tracking.log_every` steps (one all-reduce) and logged by
rank 0: loss (mean over the interval), lr, grad norm, samples/s and tokens/s (global), data-wait
share (time blocked on the batch queue / step time, mean over ranks) and step time.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from orchestration.checkpointing import TrainState
from orchestration.data import BatchLoader, DatasetStream, ExampleSource, Position
from orchestration.engine import compute_dtype, set_mode
from orchestration.samples import TextSpec, collate_examples
from orchestration.schedule import lr_at
from orchestration.train_config import TrainConfig

log = logging.getLogger(__name__)


def configure_logging(rank: int) -> None:
    """INFO from our modules in the worker's log (Ray Train workers start with WARNING)."""
    logger = logging.getLogger("orchestration")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def text_spec(cfg: TrainConfig, model) -> TextSpec:
    q = model.size.vl if cfg.model.branch == "vl" else model.size.al
    d = cfg.data
    return TextSpec(cfg.model.branch, q.num_query_tokens, cfg.model.template, d.max_txt_len, d.max_len, d.prompts)


def make_loader(cfg, tok, spec, state: TrainState, positions: dict[str, Position], rank: int, world: int):
    sources = {}
    for d in cfg.data.train:
        position = positions.get(d.name, Position())
        stream = DatasetStream(
            cfg.data.store, d.name, state.shards[d.name], rank, world, cfg.seed, position, cfg.storage
        )
        sources[d.name] = ExampleSource(stream, d.text, spec, tok, cfg.seed)
    s = cfg.scaling
    ratios = [d.ratio for d in cfg.data.train]
    return BatchLoader(
        sources, ratios, cfg.seed, s.micro_batch, s.grad_accum, state.step, cfg.total_steps, cfg.data.prefetch
    )


def to_device(tensors: dict, device, dtype: torch.dtype) -> dict:
    return {k: v.to(device, dtype if v.is_floating_point() else None) for k, v in tensors.items()}


@dataclass
class Interval:
    """Sums since the last log, this rank."""

    loss: float = 0.0
    micro: int = 0
    steps: int = 0
    tokens: float = 0.0
    wait: float = 0.0
    time: float = 0.0

    def reduce(self, device) -> dict[str, float]:
        """Global figures: one all-reduce of the sums."""
        t = torch.tensor([self.loss, self.micro, self.tokens, self.wait, self.time], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(t)
        world = dist.get_world_size() if dist.is_initialized() else 1
        loss, micro, tokens, wait, elapsed = t.tolist()
        step_time = elapsed / world / max(self.steps, 1)  # mean over ranks and steps
        return {
            "loss": loss / max(micro, 1),
            "tokens_per_s": tokens / max(elapsed / world, 1e-9),
            "data_wait_share": wait / max(elapsed, 1e-9),
            "step_time_s": step_time,
        }


def step_seed(seed: int, rank: int, step: int) -> int:
    """Dropout's seed for one step on one rank: a resumed run draws the same masks as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def train_step(engine, batches, step: int, cfg: TrainConfig, dtype, rank: int) -> tuple[Interval, list]:
    """One optimizer step over grad_accum micro-batches; the lr is set first, as the original."""
    torch.manual_seed(step_seed(cfg.seed, rank, step))
    lr = lr_at(step, **_schedule(cfg))
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    stats, seen = Interval(steps=1), []
    start = time.perf_counter()
    for _ in range(cfg.scaling.grad_accum):
        waited = time.perf_counter()
        batch = next(batches)
        stats.wait += time.perf_counter() - waited
        if batch.step != step:
            raise RuntimeError(f"data loader out of step: batch for step {batch.step}, training step {step}")
        tensors = to_device(batch.tensors, engine.device, dtype)
        loss = engine(tensors)
        engine.backward(loss)
        engine.step()
        stats.loss += float(loss.detach())
        stats.micro += 1
        stats.tokens += float(tensors["attention_mask"].sum())
        seen.append(batch)
    stats.time = time.perf_counter() - start
    return stats, seen


def _schedule(cfg: TrainConfig) -> dict:
    o = cfg.optim
    return dict(init_lr=o.init_lr, min_lr=o.min_lr, warmup_lr=o.warmup_lr, warmup_steps=o.warmup_steps,
                iters_per_epoch=o.iters_per_epoch, epochs=o.epochs, schedule=o.schedule)  # fmt: skip


@torch.no_grad()
def evaluate(engine, model, cfg: TrainConfig, tok, spec: TextSpec, rank: int, world: int, dtype) -> dict[str, float]:
    """Mean loss over the same `eval.batches` micro-batches of each held-out dataset, all ranks."""
    from pipelines.features.format import complete_shards

    set_mode(engine, model, cfg, training=False)
    out = {}
    for d in cfg.data.val:
        shards = complete_shards(cfg.data.store, d.name, cfg.storage)
        source = ExampleSource(
            DatasetStream(cfg.data.store, d.name, shards, rank, world, cfg.seed, storage=cfg.storage),
            d.text,
            spec,
            tok,
            cfg.seed,
        )
        total = torch.zeros(2, dtype=torch.float64, device=engine.device)
        for _ in range(cfg.eval.batches):
            examples = [source.take()[0] for _ in range(cfg.scaling.micro_batch)]
            batch = to_device(collate_examples(examples, tok.pad_token_id, spec.branch), engine.device, dtype)
            total += torch.tensor([float(engine(batch)), 1.0], dtype=torch.float64, device=engine.device)
        if dist.is_initialized():
            dist.all_reduce(total)
        out[f"val_loss/{d.name}"] = float(total[0] / total[1])
    out["val_loss"] = sum(out.values()) / len(out)
    set_mode(engine, model, cfg, training=True)
    return out


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def run_steps(cfg, ds, engine, model, state: TrainState, positions, rank, world, tracker, report: Callable) -> None:
    """Steps state.step+1 .. total: train, log, evaluate and checkpoint on schedule."""
    tok, spec, dtype, total = model.llm.tokenizer, text_spec(cfg, model), compute_dtype(ds), cfg.total_steps
    loader = make_loader(cfg, tok, spec, state, positions, rank, world)
    batches, interval, keys = iter(loader), Interval(), []
    set_mode(engine, model, cfg, training=True)
    try:
        while state.step < total:
            stats, seen = train_step(engine, batches, state.step, cfg, dtype, rank)
            state.step += 1
            positions = seen[-1].positions
            for field in ("loss", "micro", "steps", "tokens", "wait", "time"):
                setattr(interval, field, getattr(interval, field) + getattr(stats, field))
            if cfg.data.record_keys:
                keys += [{"step": state.step, "dataset": b.dataset, "keys": b.keys, "epochs": b.epochs} for b in seen]
            metrics = {}
            if _due(state.step, cfg.tracking.log_every, total):
                metrics = _log(interval.reduce(engine.device), engine, cfg, state.step, tracker)
                interval = Interval()
            if cfg.data.val and _due(state.step, cfg.eval.every_steps, total):
                metrics |= evaluate(engine, model, cfg, tok, spec, rank, world, dtype)
                _track(tracker, {k: v for k, v in metrics.items() if k.startswith("val_loss")}, state.step, rank)
            if _due(state.step, cfg.checkpoint.every_steps, total):
                report(cfg, engine, state, positions, rank, {"step": state.step, **metrics}, keys)
                keys = []
    finally:
        loader.close()


def _log(reduced: dict, engine, cfg: TrainConfig, step: int, tracker) -> dict:
    lr = engine.optimizer.param_groups[0]["lr"]
    norm = engine.get_global_grad_norm()
    metrics = reduced | {"lr": lr, "grad_norm": float(norm) if norm is not None else float("nan")}
    metrics["samples_per_s"] = cfg.scaling.global_batch / max(metrics["step_time_s"], 1e-9)
    if tracker is not None:
        log.info(
            "step %d/%d loss %.4f lr %.3g grad %.3g | %.1f samples/s %.0f tokens/s | data-wait %.1f%% | %.3f s/step",
            step, cfg.total_steps, metrics["loss"], lr, metrics["grad_norm"], metrics["samples_per_s"],
            metrics["tokens_per_s"], 100 * metrics["data_wait_share"], metrics["step_time_s"],
        )  # fmt: skip
        tracker.log_metrics(metrics, step)
    return metrics


def _track(tracker, metrics: dict, step: int, rank: int) -> None:
    if tracker is not None and metrics:
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
        tracker.log_metrics(metrics, step)
