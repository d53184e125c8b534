"""What an extraction run did, and how fast: printed, written to `{store}/_summary.json`, kept in the manifest."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.features.extract import Plan


@dataclass
class ExtractSummary:
    store: str
    fingerprint: str
    seconds: float  # the whole run: planning (weight checksums, listings), the job, the manifest
    job_seconds: float  # the Ray Data job alone, actor start-up included
    shards_total: int  # complete media shards over every source
    shards_up_to_date: int  # skipped: their feature shard matches the media shard
    shards_computed: list[str] = field(default_factory=list)  # "dataset/NNNNN"
    shards_failed: dict[str, str] = field(default_factory=dict)  # shard -> why no marker was written
    sources_missing: dict[str, str] = field(default_factory=dict)  # media shards with a marker but no tar
    samples_ok: int = 0
    samples_failed: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    frames: int = 0  # frames through the encoders (views x frames per sample)
    frames_per_s: float = 0.0  # over job_seconds
    samples_per_s: float = 0.0  # over job_seconds
    # forward time / time the actors spent on shards: how busy the encoders were kept. Low means the
    # actors waited on decoding or storage (add decode_workers/cpus_per_actor or actors).
    encoder_busy: float = 0.0
    encode_seconds: float = 0.0
    actor_seconds: float = 0.0
    run_id: str = ""

    def brief(self) -> dict:
        """The manifest's record of this run."""
        keys = ("run_id", "shards_total", "shards_up_to_date", "samples_ok", "samples_failed", "frames",
                "frames_per_s", "samples_per_s", "encoder_busy", "seconds")  # fmt: skip
        return {k: getattr(self, k) for k in keys} | {"shards_computed": len(self.shards_computed),
                                                     "shards_failed": sorted(self.shards_failed)}  # fmt: skip

    def text(self) -> str:
        head = f"features {self.fingerprint} in {self.store}"
        if not self.shards_computed and not self.shards_failed:
            lines = [f"{head}: nothing to do, {self.shards_up_to_date}/{self.shards_total} shards up to date"]
        else:
            cats = ", ".join(f"{k} {v}" for k, v in sorted(self.categories.items(), key=lambda kv: -kv[1]))
            lines = [
                f"{head}: {len(self.shards_computed)} shards computed, {self.shards_up_to_date} up to date, "
                f"{len(self.shards_failed)} failed, of {self.shards_total} in {self.seconds:.1f} s",
                f"  samples: {self.samples_ok} ok / {self.samples_failed} failed ({cats or 'none'})",
                f"  throughput: {self.frames_per_s:.1f} frames/s, {self.samples_per_s:.2f} samples/s over "
                f"{self.job_seconds:.1f} s; encoders busy {100 * self.encoder_busy:.0f}% of actor time",
            ]
        for name, why in sorted(self.shards_failed.items()):
            lines.append(f"  shard {name} failed (re-run to retry): {why}")
        for name, why in sorted(self.sources_missing.items()):
            lines.append(f"  media shard {name} missing: {why}")
        return "\n".join(lines)


def summarise(p: Plan, stats: list[dict], failures: dict[str, str], job_s: float, total_s: float) -> ExtractSummary:
    """Totals over the markers this run wrote."""
    cats: Counter[str] = Counter()
    for s in stats:
        cats.update(s["categories"])
    ok = sum(s["ok"] for s in stats)
    frames = sum(s["frames"] for s in stats)
    encode_s = sum(s["seconds"]["encode"] for s in stats)
    actor_s = sum(s["seconds"]["total"] for s in stats)
    return ExtractSummary(
        store=p.store,
        fingerprint=p.fingerprint,
        seconds=round(total_s, 3),
        job_seconds=round(job_s, 3),
        shards_total=p.total_shards,
        shards_up_to_date=p.total_shards - len(p.tasks),
        shards_computed=sorted(f"{s['dataset']}/{s['shard']:05d}" for s in stats),
        shards_failed=dict(sorted(failures.items())),
        sources_missing=dict(sorted(p.missing.items())),
        samples_ok=ok,
        samples_failed=sum(s["failed"] for s in stats),
        categories=dict(sorted(cats.items())),
        frames=frames,
        frames_per_s=round(frames / job_s, 3) if job_s > 0 else 0.0,
        samples_per_s=round(ok / job_s, 3) if job_s > 0 else 0.0,
        encoder_busy=round(encode_s / actor_s, 4) if actor_s > 0 else 0.0,
        encode_seconds=round(encode_s, 3),
        actor_seconds=round(actor_s, 3),
        run_id=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
    )
