"""Media shards -> a fingerprinted feature store, with Ray Data: `vllama features extract`.

    plan(cfg)              fingerprint, store URI, and the source shards whose feature shard is not up to date
    ShardFeatureExtractor  the Ray Data callable class: encoders loaded once per actor; one shard per call
    run(cfg)               plan, run the actor pool over the shards, refresh the manifest, summarise

Each input row of the Ray Data job is one media shard, and `map_batches(batch_size=1)` hands it whole
to an actor, which decodes its samples (feed.SampleFeed: a bounded pool of ffmpeg processes working
ahead), runs the encoders on batches of `batch_frames` frames, streams the feature shard to storage
and writes its marker last. The trade-off: the unit of scheduling is a shard, not a sample, so a job
with fewer shards than actors leaves actors idle, and a straggler shard holds its actor; in exchange
feature shards mirror media shards one to one (same numbers, same keys, same order) and each has
its own completion marker, with no shuffle or global write step. Ingestion makes ~1000-sample shards,
so a full dataset gives thousands of shards, far more than actors.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.frozen_encoders import FrozenEncoders
from pipelines import storage
from pipelines.config import config_dataclass
from pipelines.features import format as fmt
from pipelines.features import store as st
from pipelines.features.encoders import EncoderConfig, encoder_identity, local_checkpoints
from pipelines.features.feed import Failure, SampleFeed
from pipelines.features.summary import ExtractSummary, summarise
from pipelines.features.views import Prepared, PreprocessConfig
from pipelines.storage import StorageConfig

log = logging.getLogger(__name__)


@config_dataclass
class FeatureExtractConfig:
    """One extraction run. Required: `sources` and `root`; the store is `{root}/{fingerprint}`."""

    sources: dict[str, str] = field(default_factory=dict)  # dataset name -> media shard folder (local or s3://)
    root: str = ""  # where stores live; each config's features go to {root}/{fingerprint}
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # The actor pool, set here and nowhere else: one actor per GPU at scale (ViT-g at bf16 fits many times
    # over in 80 GB; more actors per GPU only contend), CPUs per actor feed its ffmpeg decoders.
    actors: int = 1
    gpus_per_actor: float = 0.0  # 0: run on CPU
    cpus_per_actor: float = 1.0
    batch_frames: int = 64  # frames per encoder forward (whole samples, so a batch may exceed it by one sample)
    decode_workers: int = 2  # ffmpeg processes at once per actor; match cpus_per_actor at scale
    prefetch: int = 16  # samples decoded ahead of the encoders per actor (bounds memory: ~5 MB per frame view)
    timeout_s: float = 120.0  # per ffmpeg/ffprobe run
    spool_dir: str | None = None  # local scratch for media files being decoded; None = the system temp dir
    progress: bool = True
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self):
        if not self.root:
            raise ValueError("root: required, the folder or s3:// prefix feature stores live under")
        if not self.sources:
            raise ValueError("sources: required, a mapping of dataset name -> media shard folder")
        for name in self.sources:
            if not name or not all(c.isalnum() or c in "_-" for c in name) or name.startswith("_") or name == fmt.REFS:
                raise ValueError(f"sources: dataset name {name!r} must be letters, digits, _ or - (not 'refs')")
        if self.actors < 1 or self.batch_frames < 1 or self.decode_workers < 1 or self.prefetch < 1:
            raise ValueError("actors, batch_frames, decode_workers and prefetch must be >= 1")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise ValueError("gpus_per_actor must be >= 0 and cpus_per_actor > 0")


# ------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Plan:
    fingerprint: str
    store: str
    identity: dict
    weights: dict[str, str]
    tasks: list[dict]  # one per media shard to (re)compute
    total_shards: int
    missing: dict[str, str]  # "dataset/NNNNN" -> why it cannot be read (no tar beside its stats)


def store_identity(cfg: FeatureExtractConfig, weights: dict[str, str]) -> dict:
    """What the fingerprint hashes: encoders (sizes, dtype, weight checksums), views, format version."""
    return {
        "format_version": st.FORMAT_VERSION,
        "encoders": encoder_identity(cfg.encoders),
        "weights_sha256": weights,
        "preprocess": cfg.preprocess.identity(),
    }


def plan(cfg: FeatureExtractConfig) -> Plan:
    """Fingerprint the config and list the media shards whose feature shard is missing or stale."""
    weights = st.weights_checksums(cfg.encoders.weights, cfg.storage)
    identity = store_identity(cfg, weights)
    fp = st.fingerprint(identity)
    store = storage.join(cfg.root, fp)
    tasks, total, missing = [], 0, {}
    for dataset, uri in sorted(cfg.sources.items()):
        found, lost = st.source_shards(dataset, uri, cfg.storage)
        if not found and not lost:
            raise FileNotFoundError(
                f"sources.{dataset}={uri}: no complete media shards (NNNNN.tar + NNNNN_stats.json); "
                "ingest the dataset first (`vllama ingest ...`) or fix the path"
            )
        missing.update({f"{dataset}/{fmt.shard_name(i)}": why for i, why in lost.items()})
        done = st.markers(store, dataset, cfg.storage)
        total += len(found)
        tasks += [s.task() for s in found if not s.matches(done.get(s.index))]
    return Plan(fp, store, identity, weights, tasks, total, missing)


# ------------------------------------------------------------------------------ the actor


def _encode(encoders: FrozenEncoders, batch: list[Prepared]) -> list[fmt.FeatureSample]:
    """One forward over the frames (and audio clips) of whole samples; fp16 features per sample."""
    frames = torch.cat([p.frames for p in batch])  # (N, 3, 224, 224), N = sum of V * T
    qformer, vision = encoders.encode_frames(frames)  # (N, 32, H), (N, D)
    with_audio = [p for p in batch if p.clips is not None]
    audio = encoders.encode_audio(torch.stack([p.clips for p in with_audio])) if with_audio else None  # (A, 8, D)
    qformer, vision = qformer.half().cpu().numpy(), vision.half().cpu().numpy()
    audio = audio.half().cpu().numpy() if audio is not None else None
    out, start, a = [], 0, 0
    for p in batch:
        n, v, t = p.frames.shape[0], p.views, p.frames_per_view
        iba = None
        if p.clips is not None:
            iba, a = audio[a], a + 1  # (8, D)
        vl = qformer[start : start + n].reshape(v, t, *qformer.shape[1:])  # (V, T, 32, H)
        ibv = vision[start : start + n].reshape(v, t, vision.shape[1])  # (V, T, D)
        out.append(fmt.FeatureSample(key=p.key, vl=vl, ibv=ibv, iba=iba, text=p.text, meta=p.meta))
        start += n
    return out


class ShardFeatureExtractor:
    """The Ray Data callable class: loads the frozen encoders once, then extracts one shard per call."""

    def __init__(self, cfg: FeatureExtractConfig, store: str, fingerprint: str, identity: dict):
        self.cfg, self.store, self.fingerprint = cfg, store, fingerprint
        if cfg.gpus_per_actor > 0 and not torch.cuda.is_available():
            raise RuntimeError(f"gpus_per_actor={cfg.gpus_per_actor} but this actor sees no CUDA device")
        device = "cuda" if cfg.gpus_per_actor > 0 else "cpu"
        paths = local_checkpoints(cfg.encoders, cfg.storage)
        enc, dtype = cfg.encoders, getattr(torch, cfg.encoders.dtype)
        self.encoders = FrozenEncoders.from_checkpoints(paths, enc.image, enc.imagebind, device, dtype)
        if self.encoders.identity() != identity["encoders"]:  # the driver fingerprinted what this actor runs
            raise RuntimeError(f"encoders built here {self.encoders.identity()} differ from the fingerprinted ones")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        task = {k: v[0].item() if hasattr(v[0], "item") else v[0] for k, v in batch.items()}
        try:
            marker, error = extract_shard(task, self.encoders, self.cfg, self.store, self.fingerprint), ""
        except Exception as e:  # reported per shard by the driver; no marker, so the next run retries it
            where = traceback.format_exc(limit=-2).strip().splitlines()[-3:]
            marker, error = {}, f"{type(e).__name__}: {e} [{' / '.join(where)}]"
        slim = {k: v for k, v in marker.items() if k != "status"}  # per-sample detail stays in the marker
        return {"dataset": [task["dataset"]], "index": [task["index"]], "stats": [json.dumps(slim)], "error": [error]}


def _status(item: Prepared | Failure) -> dict:
    if isinstance(item, Failure):
        return {"key": item.key, "status": "failed", "category": item.category, "error": item.error}
    out = {"key": item.key, "status": "ok", "frames": item.frames_per_view, "audio": item.clips is not None}
    if item.audio_note:
        out["note"] = item.audio_note
    return out


def _batches(feed: SampleFeed, batch_frames: int, statuses: list, waited: list[float]) -> Iterator[list[Prepared]]:
    """The feed's samples in batches of at most `batch_frames` frames (whole samples: a bigger one goes alone),
    recording every sample's status and the time spent waiting on decoding."""
    pending, size = [], 0
    t = time.perf_counter()
    for item in feed:
        waited[0] += time.perf_counter() - t
        statuses.append(_status(item))
        if isinstance(item, Prepared):
            n = item.frames.shape[0]
            if pending and size + n > batch_frames:
                yield pending
                pending, size = [], 0
            pending.append(item)
            size += n
        t = time.perf_counter()
    if pending:
        yield pending


def extract_shard(task: dict, encoders: FrozenEncoders, cfg: FeatureExtractConfig, store: str, fp: str) -> dict:
    """Extract one media shard into its feature shard, then write the marker; returns the marker."""
    t0 = time.perf_counter()
    dataset, index = task["dataset"], int(task["index"])
    st.remove_marker(store, dataset, index, cfg.storage)  # a stale shard is never complete while rewritten
    spool = tempfile.mkdtemp(prefix=f"features-{dataset}-{index:05d}-", dir=cfg.spool_dir)
    statuses: list[dict] = []
    encode_s, waited, frames = 0.0, [0.0], 0
    try:
        feed = SampleFeed(task["tar"], task["sha256"], int(task["samples"]), cfg.preprocess, Path(spool),
                          cfg.decode_workers, cfg.prefetch, cfg.timeout_s, cfg.storage)  # fmt: skip
        with feed, st.ShardWriter(fmt.shard_uri(store, dataset, index), cfg.storage) as writer:
            for batch in _batches(feed, cfg.batch_frames, statuses, waited):
                t = time.perf_counter()
                encoded = _encode(encoders, batch)
                encode_s += time.perf_counter() - t
                frames += sum(p.frames.shape[0] for p in batch)
                for sample in encoded:
                    writer.add(sample)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    marker = _marker(task, feed, writer, statuses, fp)
    marker["frames"] = frames
    marker["seconds"] = {"total": round(time.perf_counter() - t0, 4), "encode": round(encode_s, 4),
                         "wait_for_decode": round(waited[0], 4), "decode_threads": round(feed.decode_s, 4)}  # fmt: skip
    st.write_marker(store, dataset, index, marker, cfg.storage)
    return marker


def _marker(task: dict, feed: SampleFeed, writer: st.ShardWriter, statuses: list[dict], fp: str) -> dict:
    failed = [s for s in statuses if s["status"] != "ok"]
    categories: dict[str, int] = {"ok": len(statuses) - len(failed)}
    for s in failed:
        categories[s["category"]] = categories.get(s["category"], 0) + 1
    return {
        "dataset": task["dataset"],
        "shard": int(task["index"]),
        "fingerprint": fp,
        "source": {
            "tar": task["tar"],
            "sha256": feed.sha256,
            "stats_sha256": task["stats_sha256"],
            "bytes": feed.bytes,
        },  # fmt: skip
        "samples": len(statuses),
        "ok": len(statuses) - len(failed),
        "failed": len(failed),
        "audio": sum(1 for s in statuses if s.get("audio")),
        "categories": dict(sorted(categories.items())),
        "tar": f"{fmt.shard_name(int(task['index']))}.tar",
        "tar_bytes": writer.size,
        "tar_sha256": writer.sha256,
        "written": st.now(),
        "code_version": st.code_version(),
        "status": statuses,
    }


# ------------------------------------------------------------------------------ run


def run_job(p: Plan, cfg: FeatureExtractConfig) -> tuple[list[dict], dict[str, str], float]:
    """The Ray Data job over `p.tasks`: (markers without per-sample detail, {shard: error}, seconds)."""
    import ray
    from tqdm.auto import tqdm

    from pipelines.ingest import init_ray

    init_ray()
    if cfg.gpus_per_actor > 0 and not ray.cluster_resources().get("GPU"):
        log.warning("gpus_per_actor=%s but the cluster has no GPU now: the actors wait for GPU nodes to join "
                    "(set gpus_per_actor=0 to run on CPU)", cfg.gpus_per_actor)  # fmt: skip
    t0 = time.perf_counter()
    ds = ray.data.from_items(p.tasks, override_num_blocks=len(p.tasks))  # one block, so one call, per shard
    ds = ds.map_batches(
        ShardFeatureExtractor,
        fn_constructor_kwargs={"cfg": cfg, "store": p.store, "fingerprint": p.fingerprint, "identity": p.identity},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_gpus=cfg.gpus_per_actor,
        num_cpus=cfg.cpus_per_actor,
    )
    ctx = ray.data.DataContext.get_current()
    saved, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # one bar, in shards, below
    stats, failures = [], {}
    bar = tqdm(total=len(p.tasks), desc=f"features {p.fingerprint}", unit="shard", disable=not cfg.progress)
    try:
        for row in ds.iter_rows():
            name = f"{row['dataset']}/{fmt.shard_name(int(row['index']))}"
            if row["error"]:
                failures[name] = row["error"]
                log.warning("feature shard %s failed, no marker written: %s", name, row["error"])
            else:
                stats.append(json.loads(row["stats"]))
            bar.update(1)
    finally:
        bar.close()
        ctx.enable_progress_bars = saved
    return stats, failures, time.perf_counter() - t0


def open_store(cfg: FeatureExtractConfig, p: Plan) -> dict:
    """Write the manifest before any shard, so a store being filled is already identified; return it."""
    manifest = _manifest(cfg, p, st.read_manifest_or_none(p.store, cfg.storage) or {})
    st.write_manifest(p.store, manifest, cfg.storage)
    return manifest


def finish(cfg: FeatureExtractConfig, p: Plan, manifest: dict, summary: ExtractSummary) -> None:
    """Refresh the manifest's lineage from every marker, record the run, write `_summary.json`."""
    manifest["datasets"] = st.lineage(p.store, cfg.sources, cfg.storage)
    manifest["updated"] = st.now()
    manifest["runs"] = [*manifest["runs"], summary.brief()][-50:]
    st.write_manifest(p.store, manifest, cfg.storage)
    storage.write_text(storage.join(p.store, st.SUMMARY), json.dumps(summary.__dict__, indent=1) + "\n", cfg.storage)


def run(cfg: FeatureExtractConfig) -> ExtractSummary:
    """Extract every media shard not yet up to date in the store for `cfg`; refresh the manifest."""
    t0 = time.perf_counter()
    p = plan(cfg)
    manifest = open_store(cfg, p)
    stats, failures, job_s = run_job(p, cfg) if p.tasks else ([], {}, 0.0)
    summary = summarise(p, stats, failures, job_s, time.perf_counter() - t0)
    finish(cfg, p, manifest, summary)
    return summary


def _manifest(cfg: FeatureExtractConfig, p: Plan, previous: dict) -> dict:
    from model.image_encoder import IMAGE_ENCODER_SIZES
    from model.imagebind import IMAGEBIND_SIZES

    pre = cfg.preprocess
    vl_width = IMAGE_ENCODER_SIZES[cfg.encoders.image].qformer_width
    ib_width = IMAGEBIND_SIZES[cfg.encoders.imagebind].out_dim
    return {
        "fingerprint": p.fingerprint,
        "identity": p.identity,
        "encoders": {
            "image": cfg.encoders.image,
            "imagebind": cfg.encoders.imagebind,
            "dtype": cfg.encoders.dtype,
            "weights": cfg.encoders.weights,
            "weights_sha256": p.weights,
        },  # fmt: skip
        "preprocess": pre.identity(),
        "views": pre.views,
        "dims": st.dims(pre.views, pre.num_frames, vl_width, ib_width),
        "dtypes": {name: "float16" for name in fmt.ARRAYS},
        "datasets": previous.get("datasets") or st.lineage(p.store, cfg.sources, cfg.storage),
        "code_version": st.code_version(),
        "created": previous.get("created", st.now()),
        "updated": st.now(),
        "runs": previous.get("runs", []),
    }
