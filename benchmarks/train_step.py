"""Training step with cached features against the original design's on-the-fly encoders.

    .venv/bin/python -m benchmarks.train_step [--videos 16] [--batch 4] [--steps 3] [--runs 3] [--quick]
                                              [--results DIR] [--work DIR]

One model (model/video_llama.py, VL branch trainable, LLM frozen), one batch of B WebVid-style
clips per step, two ways to get its visual features:

- cached: the feature store, filled once by the real extraction job (pipelines.features.extract,
  8 headtail frames, one cropped view), read the way training reads it: orchestration/data.py's
  DatasetStream -> ExampleSource -> BatchLoader (a background thread, `prefetch` batches ahead);
- on the fly (the original Video-LLaMA loop): every step decodes the batch's 8 frames per clip with
  ffmpeg (pipelines.features.views.prepare, the same sampling, crop and normalisation) in a background
  thread as the original's DataLoader workers do, then runs the frozen ViT + image Q-Former on them
  inside the step, under no_grad.

Both then run the same trainable part: VideoLLaMA.forward (video Q-Former, projection, frozen LLM),
backward, AdamW (orchestration.optim's groups) on the same samples in the same order with the same
captions. Plain torch in one process, no DeepSpeed: both arms pay the same. A run is `--steps` steps
of each arm, arms alternating, after one warm-up step of each; figures are medians over `--runs` runs,
with the 1-minute load average at each run's start. Data wait = time blocked on the batch iterator.

Sizes: the CPU model keeps the real 7B setup's ratio of encoder compute (ViT + image Q-Former forward,
8 frames) to trainable-part compute (LLM forward + backward to the soft tokens, video Q-Former forward
+ backward). Both ratios are computed here from the configs (`flops` below, parameter counts times
tokens plus attention) and recorded; the CPU model's FLOPs are also counted by torch as a check.
Writes <results>/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from benchmarks import features as fb
from benchmarks.common import RESULTS, WORK, load_1m, machine
from benchmarks.train_flops import CPU_SIZE, cpu_size, fit_layers, real_7b, sample_flops
from model.frozen_encoders import EncoderCheckpoints, FrozenEncoders, save_random_checkpoints
from model.image_encoder import IMAGE_ENCODER_SIZES
from model.llm import FrozenLlama
from model.text import collate
from model.tiny import build_tokenizer, llama_config
from model.video_llama import VideoLLaMA
from orchestration.data import BatchLoader, DatasetStream, ExampleSource, Position
from orchestration.optim import build_optimizer
from orchestration.samples import TextSpec, caption_text
from orchestration.train_config import ALIGNMENT_PROMPTS
from pipelines import shards
from pipelines.features import extract, views
from pipelines.features import format as fmt
from pipelines.features.extract import FeatureExtractConfig
from pipelines.features.summary import summarise

DATASET = "webvid"
PREFETCH = 2  # batches ahead, for both arms (the trainer's data.prefetch default)


def build_store(work: Path, videos: int) -> tuple[str, FeatureExtractConfig, FrozenEncoders]:
    """Media shards of generated clips and their feature store, made by the extraction job's own steps
    (plan, open the store, extract each shard, markers, manifest) in this process: Ray Data would only
    add its start-up for a handful of clips. A matching store left by an earlier run is reused."""
    media = fb.media_shards(work, videos, per_shard=8)
    save_random_checkpoints(work / f"weights-{CPU_SIZE}", CPU_SIZE, CPU_SIZE, seed=0)
    cfg = fb.config(CPU_SIZE, media, work, os.cpu_count() or 1)
    encoders = FrozenEncoders.from_checkpoints(EncoderCheckpoints.in_directory(cfg.encoders.weights), CPU_SIZE,
                                               CPU_SIZE)  # fmt: skip  # also the on-the-fly arm's encoders
    t0 = time.perf_counter()
    p = extract.plan(cfg)
    manifest = extract.open_store(cfg, p)
    markers = [extract.extract_shard(task, encoders, cfg, p.store, p.fingerprint) for task in p.tasks]
    summary = summarise(p, markers, {}, time.perf_counter() - t0, time.perf_counter() - t0)
    extract.finish(cfg, p, manifest, summary)
    assert summary.samples_failed == 0 and fmt.complete_shards(p.store, DATASET), summary.text()
    return p.store, cfg, encoders


def build_model(layers: int, tok, seed: int = 0) -> VideoLLaMA:
    size = cpu_size(layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        llm = LlamaForCausalLM(llama_config(size.llm, tok))
        model = VideoLLaMA(size, FrozenLlama(llm, tok), branches=("vl",))
    return model.train()


def cached_loader(tok, store: str, spec: TextSpec, batch: int, first: int, count: int, at: Position | None = None):
    """The trainer's loader (orchestration/steps.py make_loader) for steps [first, first + count), one rank,
    one dataset, its stream at position `at` (as a resumed run starts)."""
    shard_list = fmt.complete_shards(store, DATASET)
    stream = DatasetStream(store, DATASET, shard_list, rank=0, world=1, seed=0, position=at or Position())
    source = ExampleSource(stream, "caption", spec, tok, seed=0)
    return BatchLoader({DATASET: source}, [1.0], seed=0, micro_batch=batch, grad_accum=1, start=first,
                       stop=first + count, prefetch=PREFETCH)  # fmt: skip


class OnTheFlyLoader:
    """The original's input path: per step, decode each clip's frames with ffmpeg (headtail, crop,
    normalise) and tokenise its caption, `PREFETCH` batches ahead in a background thread."""

    def __init__(self, media: dict[str, dict], plan: list[tuple[str, ...]], cfg, spec: TextSpec, tok, spool: Path):
        self.media, self.plan, self.cfg, self.spec, self.tok, self.spool = media, plan, cfg, spec, tok, spool
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        threading.Thread(target=self._produce, name="on-the-fly-decode", daemon=True).start()

    def _produce(self) -> None:
        try:
            for keys in self.plan:
                prepared = [views.prepare(k, self.media[k], self.cfg.preprocess, self.spool, 60.0) for k in keys]
                text = collate([caption_text(self.tok, p.text, self.spec) for p in prepared], self.tok.pad_token_id)
                text["frames"] = torch.stack([p.frames for p in prepared])  # (B, 8, 3, 224, 224)
                self._queue.put(text)
        except BaseException as e:  # re-raised in the training thread
            self._queue.put(e)

    def __iter__(self):
        for _ in self.plan:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item


def read_media(media_dir: str) -> dict[str, dict]:
    """Every clip's members (mp4, txt) by key, in memory: the original reads local files (page cache)."""
    out = {}
    for index in shards.complete_shards(media_dir):
        for row in shards.read_samples(shards.shard_files(media_dir, index).tar):
            out[row["__key__"]] = {k: v for k, v in row.items() if not k.startswith("__")}
    return out


def timed_steps(model, optimizer, batches, expect: list, encoder=None) -> dict:
    """Step times and data wait over an iterator of batches; with `encoder`, frames go through it first.
    `expect`: the planned batches, whose token ids every batch must match (both arms train on the same)."""
    steps, waits, encode = [], [], []
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        tensors = dict(item.tensors) if hasattr(item, "tensors") else dict(item)
        planned = expect[len(steps)]
        assert torch.equal(tensors["input_ids"], planned.tensors["input_ids"]), f"not the planned {planned.keys}"
        if encoder is not None:
            frames = tensors.pop("frames")
            b, t = frames.shape[:2]
            with torch.no_grad():
                feats = encoder(frames.flatten(0, 1))  # (B*T, 32, H): the frozen ViT + image Q-Former
            tensors["vl_features"] = feats.reshape(b, t, *feats.shape[1:])  # (B, T, 32, H)
            encode.append(time.perf_counter() - t1)
        loss = model(tensors)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append(time.perf_counter() - t0)
        waits.append(t1 - t0)
    out = {"step_s": statistics.mean(steps), "wait_share": sum(waits) / sum(steps), "steps": len(steps),
           "loss": round(float(loss.detach()), 4)}  # fmt: skip
    if len(steps) > 1:  # the first step also waits for the fresh loader to fill: the steady state is after it
        out["wait_share_after_first"] = sum(waits[1:]) / sum(steps[1:])
    if encode:
        out["encode_s"] = statistics.mean(encode)
    return out


def arm_summary(runs: list[dict], batch: int) -> dict:
    step = statistics.median(r["step_s"] for r in runs)
    doc = {"runs": runs, "step_s": round(step, 4), "samples_per_s": round(batch / step, 3),
           "data_wait_share": round(statistics.median(r["wait_share"] for r in runs), 4)}  # fmt: skip
    for key in ("encode_s", "wait_share_after_first"):
        if key in runs[0]:
            doc[key.replace("wait_share", "data_wait_share")] = round(statistics.median(r[key] for r in runs), 4)
    return doc


def measure(args, work: Path) -> dict:
    store, cfg, encoders = build_store(work, args.videos)
    tok = build_tokenizer(cpu_size(1).llm)
    # stage 1: [BOS] + 32 soft tokens + caption (max_txt_len 32); the prompts are unused by captions
    spec = TextSpec("vl", 32, "llama2", 32, 512, ALIGNMENT_PROMPTS)
    plan = list(cached_loader(tok, store, spec, args.batch, 0, args.steps + 1))  # both arms' batches, in order
    text_tokens = statistics.mean(float(b.tensors["attention_mask"].sum()) / args.batch - 32 for b in plan)
    real = real_7b(args.text_tokens)
    layers = fit_layers(real["encoder_over_train"], text_tokens)
    model = build_model(layers, tok)
    optimizer = build_optimizer(model.trainable_parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999))
    media = read_media(cfg.sources[DATASET])
    spool = work / "spool"
    spool.mkdir(parents=True, exist_ok=True)

    def run_arm(name: str, first: int, count: int) -> dict:
        if name == "cached":
            at = plan[first - 1].positions[DATASET] if first else Position()
            loader = cached_loader(tok, store, spec, args.batch, first, count, at)
            return timed_steps(model, optimizer, loader, plan[first : first + count])
        keys = [b.keys for b in plan[first : first + count]]
        loader = OnTheFlyLoader(media, keys, cfg, spec, tok, spool)
        return timed_steps(model, optimizer, loader, plan[first : first + count], encoder=encoders.image)

    if not args.quick:  # warm-up: allocator, threads, page cache
        run_arm("cached", 0, 1), run_arm("on_the_fly", 0, 1)
    results = {"cached": [], "on_the_fly": []}
    for _ in range(args.runs):
        for name in results:  # alternating, so load from other jobs hits both arms alike
            load = load_1m()
            results[name].append(run_arm(name, 1, args.steps) | {"load_1m": load})
            print(f"  {name}: {results[name][-1]['step_s']:.3f} s/step (load {load})", flush=True)
    cpu = sample_flops(model.size, IMAGE_ENCODER_SIZES[CPU_SIZE], text_tokens)
    cpu |= {"llm_layers": layers, "counted_by_torch": counted_flops(model, encoders.image, plan[0].tensors)}
    return {"store": store, "batches": [list(b.keys) for b in plan], "cpu_model": cpu, "real_7b": real,
            **{k: arm_summary(v, args.batch) for k, v in results.items()}}  # fmt: skip


def counted_flops(model, encoder, tensors: dict) -> dict:
    """torch's own count on one sample of a cached batch: the encoders' forward and the trainable part's fwd + bwd."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    tensors = {k: v[:1] for k, v in tensors.items()}  # one sample: the count is per sample, and slow
    batch, frames = tensors["vl_features"].shape[:2]
    # the math attention kernel: its matmuls are counted (CPU's fused kernel goes uncounted)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(torch.zeros(1, 3, 224, 224))
    encode = counter.get_total_flops() * frames
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tensors).backward()
    model.zero_grad(set_to_none=True)
    train = counter.get_total_flops() / batch
    return {"encoder_gflop_per_sample": round(encode / 1e9, 3), "train_gflop_per_sample": round(train / 1e9, 3),
            "encoder_over_train": round(encode / train, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=16, help="generated clips in the store")
    parser.add_argument("--batch", type=int, default=4, help="clips per step (8 frames each)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per arm per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=30, help="caption tokens per sample in the real setup")
    parser.add_argument("--quick", action="store_true", help="4 clips, batch 2, 1 step, 1 run, no warm-up")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK / "train_step")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.batch, args.steps, args.runs = 4, 2, 1, 1
    args.work.mkdir(parents=True, exist_ok=True)
    t0, load = time.perf_counter(), load_1m()
    result = {
        "benchmark": "train_step",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine() | {"torch_threads": torch.get_num_threads()},
        "settings": {
            "videos": args.videos,
            "batch": args.batch,
            "steps": args.steps,
            "runs": args.runs,
            "frames": 8,
            "prefetch": PREFETCH,
            "quick": args.quick,
        },  # fmt: skip
        **measure(args, args.work),
    }
    c, o = result["cached"], result["on_the_fly"]
    result["cached_over_on_the_fly"] = {"step_time": round(c["step_s"] / o["step_s"], 4),
                                        "samples_per_s": round(c["samples_per_s"] / o["samples_per_s"], 3)}  # fmt: skip
    result["load_1m_start_end"] = [load, load_1m()]
    result["total_s"] = round(time.perf_counter() - t0, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "train_step.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("cached_over_on_the_fly", "load_1m_start_end")}))


if __name__ == "__main__":
    main()
