"""One media sample -> the encoder inputs of its V seeded views, and the text carried over.

A view reproduces one training-time draw of Video-LLaMA's augmentations: frame indices (uniform or
headtail) and, with `crop`, one RandomResizedCrop shared by the clip's frames. View v of sample `key`
draws from a `torch.Generator` seeded by (seed, key, v) only, frame indices first and then the crop,
so a re-run, another worker or a test reproduces it exactly. V=1 with uniform sampling and no crop is
the deterministic view (evaluation, instruction data); the seed then plays no part.

Images are 1-frame videos: each view is a RandomResizedCrop of the original image (with `crop`) or a
bicubic Resize to 224x224, as Video-LLaMA's image processors do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from model.preprocess import (
    FramePreprocessConfig,
    preprocess_audio,
    preprocess_image,
    preprocess_video,
    sample_frame_indices,
)
from pipelines.config import config_dataclass
from pipelines.features import decode
from pipelines.media import MediaError

SAMPLINGS = ("uniform", "headtail")


@config_dataclass
class PreprocessConfig:
    """How frames are chosen and augmented; every field is part of the store's fingerprint."""

    num_frames: int = 8  # Video-LLaMA's n_frms for every stage
    sampling: str = "uniform"  # "headtail" for WebVid pre-training views, "uniform" for instruct data / eval
    views: int = 1  # augmented views stored per sample; training draws one per visit
    crop: bool = False  # one RandomResizedCrop per clip (the training transform); False = plain resize
    crop_scale: tuple[float, float] = (0.5, 1.0)  # Video-LLaMA's min_scale / max_scale
    seed: int = 0  # with the sample key and view index, seeds each view
    audio: bool = True  # ImageBind audio features for media with an audio stream

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"preprocess.sampling={self.sampling!r}: use one of {', '.join(SAMPLINGS)}")
        if not 1 <= self.num_frames <= 32:
            raise ValueError(f"preprocess.num_frames={self.num_frames}: must be 1..32 (the video Q-Former's positions)")
        if self.sampling == "headtail" and self.num_frames < 2:
            raise ValueError("preprocess.num_frames must be >= 2 with headtail sampling (half from each end)")
        if self.views < 1:
            raise ValueError(f"preprocess.views={self.views}: must be >= 1")
        if self.views > 1 and self.deterministic_draw:
            raise ValueError(
                f"preprocess.views={self.views} with uniform sampling and no crop stores {self.views} identical views; "
                "set preprocess.sampling=headtail or preprocess.crop=true, or preprocess.views=1"
            )
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"preprocess.crop_scale={self.crop_scale}: need 0 < min <= max <= 1, e.g. [0.5, 1.0]")

    @property
    def deterministic_draw(self) -> bool:
        return self.sampling == "uniform" and not self.crop

    def identity(self) -> dict:
        """The fields that change the features: crop_scale only with crop, the seed only when views are random."""
        return {
            "num_frames": self.num_frames,
            "sampling": self.sampling,
            "views": self.views,
            "crop": self.crop,
            "crop_scale": list(self.crop_scale) if self.crop else None,
            "seed": None if self.deterministic_draw else self.seed,
            "audio": self.audio,
            "frame_size": FramePreprocessConfig().size,
        }

    def frame_cfg(self) -> FramePreprocessConfig:
        return FramePreprocessConfig(num_frames=self.num_frames, crop_scale=tuple(self.crop_scale))


@dataclass
class Prepared:
    """Encoder inputs of one sample; `frames` holds the V views one after the other."""

    key: str
    frames: torch.Tensor  # (V * T, 3, 224, 224) normalised, view-major
    views: int
    clips: torch.Tensor | None  # (8, 1, 128, 204) ImageBind audio input; None without audio
    text: str
    meta: dict
    audio_note: str = ""  # why a file with an audio stream got no audio features

    @property
    def frames_per_view(self) -> int:
        return self.frames.shape[0] // self.views


def view_generator(seed: int, key: str, view: int) -> torch.Generator:
    """The generator view `view` of sample `key` draws from: a stable hash, the same in every process."""
    digest = hashlib.sha256(f"{seed}:{key}:{view}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def media_member(members: dict[str, bytes]) -> tuple[str, str]:
    """("video" | "image", extension) of the sample's media member."""
    for kind, exts in (("video", decode.VIDEO_EXTS), ("image", decode.IMAGE_EXTS)):
        for ext in exts:
            if ext in members:
                return kind, ext
    raise MediaError(
        "not_video",
        f"no media member (has {', '.join(sorted(members)) or 'nothing'}; "
        f"expected one of {', '.join(decode.VIDEO_EXTS + decode.IMAGE_EXTS)})",
    )


def carried_text(members: dict[str, bytes]) -> tuple[str, dict]:
    """The caption and the source metadata (with any conversation), carried over unchanged."""
    text = members.get("txt", b"").decode("utf-8", "replace")
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
    except ValueError as e:
        raise MediaError("corrupt", f"json member is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise MediaError("corrupt", f"json member holds a {type(meta).__name__}, not an object")
    return text, meta


def prepare_video(key: str, path: Path, cfg: PreprocessConfig, timeout: float) -> tuple[torch.Tensor, dict, int | None]:
    """(V * T, 3, 224, 224) frames of the V views, the frame indices/seconds for the metadata, the audio rate."""
    info = decode.probe(path, timeout)
    draws = []
    for v in range(cfg.views):
        g = view_generator(cfg.seed, key, v)
        try:
            indices = sample_frame_indices(info.frames, cfg.sampling, cfg.num_frames, g)
        except ValueError as e:  # e.g. a 1-frame video cannot be sampled head and tail
            raise MediaError("decode_error", f"{path.name}: {e}") from None
        draws.append((indices, g))
    union = sorted({i for indices, _ in draws for i in indices})
    decoded = decode.decode_frames(path, union, cfg.frame_cfg().size, timeout)  # (U, 224, 224, 3)
    where = {frame: row for row, frame in enumerate(union)}
    views = [
        preprocess_video(decoded[[where[i] for i in indices]], cfg.crop, g, cfg.frame_cfg()) for indices, g in draws
    ]
    fps = info.fps or 1.0
    meta = {
        "frame_indices": [indices for indices, _ in draws],
        # VideoChat's prompt names the sampled times (rounded as its loader does); view 0's, which every
        # view shares under uniform sampling.
        "frame_seconds": [round(i / fps, 1) for i in draws[0][0]],
    }
    return torch.cat(views), meta, info.audio_rate


def prepare_audio(path: Path, rate: int | None, timeout: float) -> tuple[torch.Tensor | None, str]:
    """(8, 1, 128, 204) ImageBind input, or None with the reason when the audio is unusable."""
    if rate is None:
        return None, ""
    wave = decode.decode_audio(path, timeout)
    try:
        return preprocess_audio(wave, rate), ""
    except ValueError as e:  # shorter than one fbank frame: the video is still usable
        return None, f"audio not used: {e}"


def prepare(key: str, members: dict[str, bytes], cfg: PreprocessConfig, spool: Path, timeout: float) -> Prepared:
    """Decode one sample's media and build its views; MediaError when the media cannot be used."""
    text, meta = carried_text(members)
    kind, ext = media_member(members)
    if kind == "image":
        image = decode.decode_image(members[ext], f"{key}.{ext}")
        views = [preprocess_image(image, cfg.crop, view_generator(cfg.seed, key, v), cfg.frame_cfg())
                 for v in range(cfg.views)]  # fmt: skip
        return Prepared(key, torch.stack(views), cfg.views, None, text, meta)  # (V, 3, 224, 224)
    path = spool / f"{key}.{ext}"
    path.write_bytes(members[ext])
    try:
        frames, frame_meta, audio_rate = prepare_video(key, path, cfg, timeout)
        clips, note = prepare_audio(path, audio_rate, timeout) if cfg.audio else (None, "")
    finally:
        path.unlink(missing_ok=True)
    return Prepared(key, frames, cfg.views, clips, text, {**meta, **frame_meta}, audio_note=note)
