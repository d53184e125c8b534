"""Media shards in the ingestion format, built from the generated sample data, for feature-store tests.

Shards are written with `pipelines.shards.write_shard` (tar + sidecar + `_stats.json` with the tar's
sha256), exactly what `vllama ingest` leaves behind, without running a download for every test.
`extract_here` runs an extraction with the shards done in this process by the class each Ray actor runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa

from pipelines import shards


def video_members(sample_data, sample) -> dict[str, bytes | Path]:
    """A WebVid-ingested sample: mp4, cleaned caption, metadata json."""
    meta = {"videoid": sample.id, "caption": sample.caption, "has_audio": sample.has_audio, "fps": sample.fps}
    return {
        "mp4": Path(sample_data.path(sample.file)),
        "txt": sample.caption.encode(),
        "json": json.dumps(meta).encode(),
    }


def image_members(sample_data, sample) -> dict[str, bytes | Path]:
    """An image-set sample as img2dataset writes it: jpg, caption, metadata json."""
    meta = {"key": sample.id, "caption": sample.caption, "width": sample.width, "height": sample.height}
    return {
        "jpg": Path(sample_data.path(sample.file)),
        "txt": sample.caption.encode(),
        "json": json.dumps(meta).encode(),
    }


def write_media_shard(out: str, index: int, samples: list[tuple[str, dict]]) -> dict:
    """One media shard (tar, sidecar, `_stats.json` last) of `samples` [(key, members)]; its stats."""
    keys = [k for k, _ in samples]
    rows = shards.input_table(
        {
            "row": list(range(len(keys))),
            "key": keys,
            "source": [f"test row {k}" for k in keys],
            "category": [""] * len(keys),
            "error": [""] * len(keys),
        }  # fmt: skip
    )
    sidecar = rows.append_column("status", pa.array([shards.OK] * len(keys)))
    return shards.write_shard(out, index, samples, sidecar, {})


def extract_here(cfg):
    """`extract.run` with the shards extracted in this process by one `ShardFeatureExtractor` (what each
    Ray actor runs), for tests that check what is written rather than the Ray job around it."""
    from pipelines.features import extract
    from pipelines.features.summary import summarise

    t0 = time.perf_counter()
    p = extract.plan(cfg)
    manifest = extract.open_store(cfg, p)
    actor = extract.ShardFeatureExtractor(cfg, p.store, p.fingerprint, p.identity)
    stats, failures = [], {}
    for task in p.tasks:
        row = actor({k: [v] for k, v in task.items()})
        if row["error"][0]:
            failures[f"{task['dataset']}/{task['index']:05d}"] = row["error"][0]
        else:
            stats.append(json.loads(row["stats"][0]))
    summary = summarise(p, stats, failures, time.perf_counter() - t0, time.perf_counter() - t0)
    extract.finish(cfg, p, manifest, summary)
    return summary
