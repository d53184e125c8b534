"""Per-unit CPU costs for the capacity plan, from the benchmarks' results scaled to real media.

The benchmarks (benchmarks/*.py, results in benchmarks/results/) run on small generated media; the
generated sets are re-planned here (pipelines.sample_plan, same seed and counts) to know their pixel-
frames, and each figure is scaled to the real clip or image the plan assumes. A missing result file
is replaced by a stated hand estimate; every figure carries a line saying which it is.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestration.plan import PlanConfig


@dataclass(frozen=True)
class Measured:
    clip_ingest_core_s: float  # download, probe, transcode and shard writing of one real clip
    image_ingest_core_s: float  # download/read, resize and shard writing of one real image
    clip_decode_core_s: float  # decoding one ingested clip's frames for the encoders (features, on-the-fly)
    efficiency: float  # feature job frames/s over the bare encoder's on the same batches
    sources: tuple[str, ...]  # per figure: file, machine and derivation, or the assumption that replaced it


# Used when a result file is missing: hand estimates for one modern core, not measurements.
FALLBACK_CLIP_INGEST_CORE_S = 2.0  # decode 596x336 at ~600 frames/s + x264 veryfast 224 px at ~400 frames/s
FALLBACK_IMAGE_INGEST_CORE_S = 0.02  # decode, resize and re-encode a ~0.2 MP JPEG
FALLBACK_DECODE_PER_PIXEL_FRAME = 1 / 100e6  # H.264 decode at ~100 Mpixel/s per core (~1100 frames/s at 398x224)
FALLBACK_EFFICIENCY = 0.8


def scaled(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Frame size after ingestion's scale filter (pipelines.media.scale_exprs): short side capped, even sizes."""
    if width <= height:
        w = min(short_side, width) // 2 * 2
        return w, round(height * w / width / 2) * 2
    h = min(short_side, height) // 2 * 2
    return round(width * h / height / 2) * 2, h


def _pixel_frames(samples, short_side: int | None = None) -> float:
    """Mean decoded pixels per clip (width x height x frames), after scaling when short_side is given."""
    sizes = [scaled(s.width, s.height, short_side) if short_side else (s.width, s.height) for s in samples]
    return statistics.mean(w * h * s.frames for (w, h), s in zip(sizes, samples, strict=True))


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _machine(path: Path, doc: dict) -> str:
    m = doc.get("machine", {})
    noisy = "; shared, noisy" if "shared" in m.get("note", "") else ""
    where = f"{m.get('cpu', '?')} x{m.get('cores', '?')} cores, {m.get('gpu') or 'no GPU'}{noisy}"
    return f"{path.name} ({doc.get('date', '?')[:10]}, {where})"


def _real_pixel_frames(cfg: PlanConfig) -> tuple[float, float]:
    """Pixel-frames of one real clip as downloaded and as ingested (short side scaled)."""
    frames = cfg.clip_fps * cfg.clip_seconds
    ingested = math.prod(scaled(cfg.clip_width, cfg.clip_height, cfg.short_side))
    return cfg.clip_width * cfg.clip_height * frames, ingested * frames


def _webvid(cfg: PlanConfig, path: Path, sample_plan) -> tuple[float, float, str]:
    """Core-s to ingest a real clip, and ffmpeg's decode core-s per pixel-frame (benchmarks/ingest_webvid.py)."""
    if (doc := _read(path)) is None:
        rate = 1e-6 / FALLBACK_DECODE_PER_PIXEL_FRAME
        text = f"{path.name} missing: assumed {FALLBACK_CLIP_INGEST_CORE_S} core-s to ingest a clip, decode {rate:.0f}"
        return FALLBACK_CLIP_INGEST_CORE_S, FALLBACK_DECODE_PER_PIXEL_FRAME, text + " Mpixel/s per core"
    # benchmarks/ingest_webvid.py: one generated set (seed 0, no images, no held-out split); mode b
    # (transcode to short_side) runs on its first clips that are landscape, >= short_side high and
    # silent (where ours and video2dataset do the same work); the decode check on its first clips.
    settings = doc["plan"]["settings"]
    videos = sample_plan(0, doc["inputs"]["sample_set"]["videos"], 0, 0.0)
    b_pool = [v for v in videos if v.width >= v.height >= settings["short_side"] and not v.has_audio]
    (nb, ours_b), = doc["modes"]["b"]["series"]["ours"].items()  # fmt: skip
    limit_b = doc["modes"]["b"]["series"]["limit"][nb]
    (nd, limit_d), = doc["modes"]["decode"]["series"]["limit"].items()  # fmt: skip
    syn_b, syn_d = b_pool[: int(nb)], videos[: int(nd)]
    real_in, real_out = _real_pixel_frames(cfg)
    per = settings["processes"] * ours_b["median_s"] / int(nb)  # core-s per clip, transcode pipeline
    per_pf = settings["processes"] * limit_d["median_s"] / int(nd) / _pixel_frames(syn_d)  # plain ffmpeg decode
    share = min(1.0, per_pf * _pixel_frames(syn_b) / (settings["processes"] * limit_b["median_s"] / int(nb)))
    up_in, up_out = real_in / _pixel_frames(syn_b), real_out / _pixel_frames(syn_b, cfg.short_side)
    clip = per * (share * up_in + (1 - share) * up_out)
    text = (
        f"{_machine(path, doc)}: the transcode pipeline takes {per:.3f} core-s per generated clip; its decode "
        f"share ({share:.0%} of ffmpeg's time) scaled by source pixel-frames (x{up_in:.1f}), the rest by output "
        f"pixel-frames (x{up_out:.1f}): {clip:.2f} core-s per real clip, an upper bound (per-clip overheads scale "
        f"too). Plain ffmpeg decodes {1e-6 / per_pf:.0f} Mpixel/s per core"
    )
    return clip, per_pf, text


def _images(cfg: PlanConfig, path: Path, sample_plan) -> tuple[float, str]:
    """Core-s to ingest a real image (benchmarks/ingest_cc3m.py: img2dataset download, resize, shards)."""
    if (doc := _read(path)) is None:
        return FALLBACK_IMAGE_INGEST_CORE_S, f"{path.name} missing: assumed {FALLBACK_IMAGE_INGEST_CORE_S} core-s"
    pixels = statistics.mean(s.width * s.height for s in sample_plan(0, 0, doc["images"], 0.0))
    per = doc["machine"]["cores"] / doc["pipeline"]["images_per_s"]
    up = cfg.image_width * cfg.image_height / pixels
    text = f"{_machine(path, doc)}: {per:.4f} core-s per generated image, x{up:.1f} pixels: {per * up:.3f} per real one"
    return per * up, text


def _features(cfg: PlanConfig, path: Path, sample_plan, per_pf: float) -> tuple[float, float, str]:
    """Core-s to decode an ingested clip's frames for the encoders, and the feature job's efficiency.

    The job's decode time per generated clip splits into ffmpeg's full decode (per pixel-frame, from
    ingest_webvid.json) and a per-clip rest (processes, probe, audio, frame copies), kept as is.
    """
    _, real_out = _real_pixel_frames(cfg)
    if (doc := _read(path)) is None:
        decode = real_out * per_pf
        text = f"{path.name} missing: decoding a clip = ffmpeg's full decode, {decode:.2f} core-s; job efficiency"
        return decode, FALLBACK_EFFICIENCY, f"{text} assumed {FALLBACK_EFFICIENCY}"
    name, size = max(doc["sizes"].items(), key=lambda kv: kv[1]["gflop_per_frame"])  # nearest the real encoders
    syn = [s for s in sample_plan(0, doc["videos"], 1, 0.2) if s.kind == "video"]  # its set (default val_fraction)
    per = size["frames_per_run"] / doc["videos"] / size["decode_frames_per_s_per_thread"]
    rest = max(0.0, per - per_pf * _pixel_frames(syn))
    decode, efficiency = per_pf * real_out + rest, 1 - size["overhead_vs_bare"]
    text = (
        f"{_machine(path, doc)}: the job decodes a generated clip in {per:.3f} thread-s, {rest:.3f} of it beyond "
        f"ffmpeg's own decode: {decode:.2f} core-s per {cfg.short_side}-px real clip; size '{name}' runs at "
        f"{efficiency:.3f} x the bare encoder's frames/s"
    )
    return decode, efficiency, text


def measure(cfg: PlanConfig) -> Measured:
    """The per-unit CPU figures, each from its benchmark file when present, else the stated fallback."""
    from pipelines.sample_plan import plan as sample_plan  # re-plans the benchmarks' generated sets

    root = Path(cfg.results)

    def read(name: str, fn, *args):
        try:
            return fn(cfg, root / name, sample_plan, *args)
        except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:  # bad JSON, a missing or empty field
            raise ValueError(
                f"{root / name}: unreadable ({type(e).__name__}: {e}); re-run its benchmark or delete it"
            ) from None

    clip, per_pf, webvid = read("ingest_webvid.json", _webvid)
    image, images = read("ingest_cc3m.json", _images)
    decode, efficiency, features = read("features.json", _features, per_pf)
    return Measured(clip, image, decode, efficiency, (webvid, images, features))
