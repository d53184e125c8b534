"""Feature extraction throughput against its limit: the bare encoder forward on the same batches.

    .venv/bin/python -m benchmarks.features [--videos 8] [--runs 3] [--sizes small] [--quick]
                                            [--results DIR] [--work DIR]

Generates a sample set (pipelines.sample_data), writes it as media shards, and for each encoder size
measures, on the same samples, views and batches (`batch_frames` frames of whole samples):

- the pipeline: `pipelines.features.extract.run` (Ray Data, one actor with every core of the machine,
  ffmpeg decoding in the actor's pool, feature shards written), from an empty store each run. Two
  rates: frames/s over the job's wall time (actor start-up and weight loading included) and frames/s
  over the time the actor spent on shards (the steady state a long job approaches);
- reuse: the same job run again on the store it just filled (same config, so the same fingerprint):
  its seconds, and a check that nothing was computed (every shard up to date, no frame encoded);
- the limit: the same encoder stack in one process, a Ray actor with the same CPUs (so the same torch
  threads and process priority), timing only the forward passes over the same batches, every sample
  decoded beforehand.

The pipeline's overhead is 1 - (steady-state frames/s) / (bare frames/s): decoding competing for the
CPU, waiting on decode, storage. Sizes: `tiny` (model/'s test size) and `small`, a CPU-sized stand-in
for the real encoders (ViT 256 wide x 4 blocks, Q-Former 256 x 2, ImageBind vision 256 x 4, audio 256 x 2;
about 30 times tiny's FLOPs per frame; the default, since tiny's figures are all start-up cost).
The real encoders on a GPU at bf16 are the `gpu` section's (benchmarks/gpu.py). Medians of --runs runs
after one warm-up, each with the 1-minute load average at its start. Writes <results>/features.json
(benchmarks/run.py runs it as the `features` section).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import ray
import torch

from benchmarks.common import RESULTS, WORK, load_1m, machine
from model.frozen_encoders import EncoderCheckpoints, FrozenEncoders, save_random_checkpoints
from pipelines import shards
from pipelines.features import extract, views
from pipelines.features import store as st
from pipelines.features.extract import FeatureExtractConfig
from pipelines.sample_data import SampleDataConfig, generate

BATCH_FRAMES = 32


# GPU peak dense bf16 FLOP/s by device name (vendor datasheets, SXM parts).
def media_shards(work: Path, videos: int, per_shard: int) -> str:
    """Generated videos as media shards in the ingestion format; their folder."""
    sample = generate(SampleDataConfig(out=str(work / "sample"), videos=videos, images=1, seed=0))
    out = work / "media" / "webvid"
    shutil.rmtree(out, ignore_errors=True)
    items = [(s.id, {"mp4": Path(sample.path(s.file)), "txt": s.caption.encode()}) for s in sample.videos]
    for index, start in enumerate(range(0, len(items), per_shard)):
        part = items[start : start + per_shard]
        rows = shards.input_table({"row": list(range(len(part))), "key": [k for k, _ in part],
                                   "source": ["bench"] * len(part), "category": [""] * len(part),
                                   "error": [""] * len(part)})  # fmt: skip
        shards.write_shard(str(out), index, part, rows.append_column("status", pa.array([shards.OK] * len(part))), {})
    return str(out)


def config(size: str, media: str, work: Path, cpus: int) -> FeatureExtractConfig:
    return FeatureExtractConfig(
        sources={"webvid": media},
        root=str(work / f"stores-{size}"),
        encoders={"weights": str(work / f"weights-{size}"), "image": size, "imagebind": size},
        preprocess={"num_frames": 8, "sampling": "headtail", "views": 1, "crop": True},
        actors=1,
        cpus_per_actor=cpus,
        decode_workers=cpus,
        batch_frames=BATCH_FRAMES,
        progress=False,
    )


def pipeline_run(cfg: FeatureExtractConfig) -> dict:
    """The job from an empty store, then again on the store it filled (the reuse case)."""
    shutil.rmtree(cfg.root, ignore_errors=True)
    load = load_1m()
    s = extract.run(cfg)
    assert not s.shards_failed and s.samples_failed == 0, s.text()
    decode_s = sum(m["seconds"]["decode_threads"] for m in st.markers(s.store, "webvid").values())
    again = extract.run(cfg)  # same config: same fingerprint, every shard's marker matches its media shard
    assert again.store == s.store and not again.shards_computed and again.frames == 0, again.text()
    assert again.shards_up_to_date == again.shards_total == s.shards_total, again.text()
    return {"job_s": s.job_seconds, "actor_s": s.actor_seconds, "encode_s": s.encode_seconds, "frames": s.frames,
            "decode_thread_s": round(decode_s, 3), "reuse_s": again.seconds, "load_1m": load}  # fmt: skip


def bare_batches(cfg: FeatureExtractConfig, spool: Path) -> list[list[views.Prepared]]:
    """Every sample decoded and viewed as the pipeline does it, grouped into the pipeline's batches."""
    spool.mkdir(parents=True, exist_ok=True)
    samples = []
    for index in shards.complete_shards(cfg.sources["webvid"]):
        for row in shards.read_samples(shards.shard_files(cfg.sources["webvid"], index).tar):
            members = {k: v for k, v in row.items() if not k.startswith("__")}
            samples.append(views.prepare(row["__key__"], members, cfg.preprocess, spool, cfg.timeout_s))
    batches, current = [], []
    for p in samples:
        if current and sum(x.frames.shape[0] for x in current) + p.frames.shape[0] > cfg.batch_frames:
            batches.append(current)
            current = []
        current.append(p)
    return [*batches, current] if current else batches


class BareForward:
    """The limit, run as a Ray actor with the pipeline actor's resources, so both see the same process
    settings (Ray's OMP_NUM_THREADS, its worker priority): every sample decoded first, then only the
    forward passes over the pipeline's batches are timed.

    The loop runs in a worker thread because Ray Data calls the extractor from one: on this machine,
    under load, torch's CPU ops from a process's main thread ran 2-3x slower than the same ops from a
    worker thread with the same thread count, which would flatter the pipeline."""

    def __init__(self, cfg: FeatureExtractConfig, spool: Path):
        paths = EncoderCheckpoints.in_directory(cfg.encoders.weights)
        self.encoders = FrozenEncoders.from_checkpoints(paths, cfg.encoders.image, cfg.encoders.imagebind)
        self.batches = bare_batches(cfg, spool)

    def run(self) -> dict:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self._forward_all).result()

    def _forward_all(self) -> dict:
        t0 = time.perf_counter()
        for batch in self.batches:
            extract._encode(self.encoders, batch)  # the pipeline's own forward step, fp16 features out
        frames = sum(p.frames.shape[0] for b in self.batches for p in b)
        return {"forward_s": time.perf_counter() - t0, "frames": frames, "threads": torch.get_num_threads()}

    def gflop_per_frame(self) -> float:
        """Forward FLOPs of one frame through both frame encoders, as torch counts them."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.encoders.encode_frames(torch.zeros(2, 3, 224, 224))
        return counter.get_total_flops() / 2 / 1e9

    def parameters(self) -> int:
        return sum(p.numel() for p in self.encoders.parameters())


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench_size(size: str, media: str, runs: int, cpus: int, work: Path, warmup: bool = True) -> dict:
    save_random_checkpoints(work / f"weights-{size}", size, size, seed=0)
    cfg = config(size, media, work, cpus)
    pipeline, bare = [], []
    for _ in range(runs + warmup):  # interleaved, so load from other jobs on a shared machine hits both alike
        pipeline.append(pipeline_run(cfg))
        limit = ray.remote(num_cpus=cpus)(BareForward).remote(cfg, work / "spool")  # fresh, as each run's actor
        load = load_1m()
        bare.append(ray.get(limit.run.remote()) | {"load_1m": load})
        info = ray.get([limit.gflop_per_frame.remote(), limit.parameters.remote()])
        ray.kill(limit)
    pipeline, bare = pipeline[warmup:], bare[warmup:]  # the first run warms the page cache and Ray
    frames = pipeline[0]["frames"]
    wall = frames / median_of(pipeline, "job_s")
    steady = frames / median_of(pipeline, "actor_s")
    best = frames / median_of(bare, "forward_s")
    reuse = median_of(pipeline, "reuse_s")
    print(f"  {size}: pipeline {wall:.1f} frames/s wall, {steady:.1f} in the actor; bare forward {best:.1f}; "
          f"reuse {reuse:.2f} s", flush=True)  # fmt: skip
    return {
        "parameters": info[1],
        "gflop_per_frame": round(info[0], 3),
        "torch_threads": bare[0]["threads"],
        "frames_per_run": frames,
        "pipeline": {"runs": pipeline, "frames_per_s_wall": round(wall, 2), "frames_per_s_actor": round(steady, 2),
                     "encoder_busy": round(median_of(pipeline, "encode_s") / median_of(pipeline, "actor_s"), 3),
                     "job_s_median": round(median_of(pipeline, "job_s"), 3)},
        # the second run of the same config on a full store: planning + manifest, no shard computed
        "reuse": {"seconds": [r["reuse_s"] for r in pipeline], "median_s": round(reuse, 3),
                  "over_job": round(reuse / median_of(pipeline, "job_s"), 4)},
        # decoding (ffmpeg select + scale, audio, crop, normalise) per decode thread: sizes CPUs per GPU actor
        "decode_frames_per_s_per_thread": round(frames / median_of(pipeline, "decode_thread_s"), 1),
        "bare_forward": {"runs": [round(r["forward_s"], 3) for r in bare], "load_1m": [r["load_1m"] for r in bare],
                         "frames_per_s": round(best, 2)},
        "job_over_bare": round(wall / best, 3),
        "actor_over_bare": round(steady / best, 3),
        "overhead_vs_bare": round(1 - steady / best, 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=8, help="generated videos (8 frames each go through)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per setting (after one warm-up)")
    parser.add_argument("--sizes", default="small", help="encoder sizes, comma separated (tiny, small)")
    parser.add_argument("--quick", action="store_true", help="4 videos, tiny, 1 run, no warm-up: machinery only")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK / "features")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.runs, args.sizes = 4, 1, "tiny"
    load_start = load_1m()  # recorded: on a shared machine other jobs slow both sides
    cpus = os.cpu_count() or 1
    args.work.mkdir(parents=True, exist_ok=True)
    media = media_shards(args.work, args.videos, per_shard=8)
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
    t0 = time.perf_counter()
    results = {
        "benchmark": "features",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine({"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})
        | {"cores_used": cpus},
        "videos": args.videos,
        "preprocess": "8 frames, headtail, 1 view, clip crop",
        "batch_frames": BATCH_FRAMES,
        "runs": args.runs,
        "warmup": not args.quick,
        "quick": args.quick,
        "sizes": {s: bench_size(s, media, args.runs, cpus, args.work, not args.quick) for s in args.sizes.split(",")},
    }
    ray.shutdown()
    results["load_1m_start_end"] = [load_start, load_1m()]
    results["total_s"] = round(time.perf_counter() - t0, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "features.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.results / 'features.json'}")


if __name__ == "__main__":
    main()
