"""Decode what the frozen encoders need from a media file: chosen frames at 224x224, and audio.

Video-LLaMA reads videos with decord (`VideoReader(path, height=224, width=224)`, then `get_batch(indices)`):
the frame count is the container's, and frames are scaled straight to 224x224 by ffmpeg, aspect not kept.
Here one ffmpeg process does the same: the `select` filter keeps only the wanted frame numbers, `scale`
resizes them (bicubic, ffmpeg's default and decord's), and rawvideo rgb24 comes back on a pipe. Decoding
stops after the last wanted frame (`-frames:v`), so the tail of a long clip is never decoded.

Audio follows ImageBind's loader (torchaudio.load, then torchaudio's resampler to 16 kHz, and the fbank
reads channel 0): ffmpeg decodes channel 0 at the file's own rate (`pan=mono|c0=c0`), and
`model.preprocess.preprocess_audio` resamples with torchaudio's algorithm. Decoding at 16 kHz in
ffmpeg would use its own resampler and give slightly different fbanks.

Every run has a timeout, and any failure is a `media.MediaError` with a category (see pipelines.shards).
"""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg  # ffmpeg-python
import numpy as np
from PIL import Image

from pipelines.media import MediaError, ffmpeg_bin, ffprobe_bin

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")  # media members a video sample may carry
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class MediaInfo:
    """What a video holds, from its container: frames counted as decord counts them (packets)."""

    frames: int
    fps: float
    audio_rate: int | None  # Hz of the first audio stream; None when the file has no audio


def _run(args: list[str], name: str, what: str, timeout: float) -> bytes:
    """Run ffmpeg/ffprobe; stdout on success, MediaError naming the file otherwise."""
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MediaError("decode_error", f"{name}: {what} took over {timeout:g} s") from None
    err = proc.stderr.decode("utf-8", "replace").strip()[-400:].replace("\n", " | ")
    if proc.returncode != 0 or err:  # -xerror and the error log level: silence means a clean decode
        category = "corrupt" if what == "ffprobe" else "decode_error"
        raise MediaError(category, f"{name}: {what} failed: {err or f'exit {proc.returncode}'}")
    return proc.stdout


def _rate(value: str | None) -> float:
    num, _, den = (value or "0/1").partition("/")
    try:
        return float(num) / float(den or 1) if float(den or 1) else 0.0
    except ValueError:
        return 0.0


def probe(path: Path, timeout: float = 60.0) -> MediaInfo:
    """Frame count, frame rate and audio rate of a video file.

    The count is the video stream's packets (`-count_packets`: a demux, no decode), which is what
    decord's `len(vr)` reports for the usual one-frame-per-packet codecs.
    """
    args = [ffprobe_bin(), "-v", "error", "-count_packets", "-show_streams", "-of", "json", str(path)]
    streams = json.loads(_run(args, path.name, "ffprobe", timeout) or b"{}").get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        raise MediaError("not_video", f"{path.name}: no video stream")
    frames = int(video.get("nb_read_packets") or 0)
    if frames < 1:
        raise MediaError("decode_error", f"{path.name}: the video stream has no frames")
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    rate = int(audio["sample_rate"]) if audio is not None and audio.get("sample_rate") else None
    return MediaInfo(frames=frames, fps=fps, audio_rate=rate)


def decode_frames(path: Path, indices: list[int], size: int = 224, timeout: float = 120.0) -> np.ndarray:
    """Frames number `indices` (sorted, unique) of the video, scaled to size x size: uint8 (len, size, size, 3)."""
    if not indices or sorted(set(indices)) != list(indices):
        raise ValueError(f"frame indices must be sorted and unique, got {indices}")
    wanted = "+".join(f"eq(n,{i})" for i in indices)
    stream = (
        ffmpeg.input(str(path), threads=1)["v:0"]
        .filter("select", wanted)
        .filter("scale", size, size, flags="bicubic")
        .filter("format", "rgb24")
    )
    out = ffmpeg.output(stream, "pipe:", format="rawvideo", fps_mode="passthrough", **{"frames:v": len(indices)})
    args = out.global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-xerror").compile(cmd=ffmpeg_bin())
    raw = _run(args, path.name, "frame decoding", timeout)
    frame_bytes = size * size * 3
    if len(raw) != frame_bytes * len(indices):
        got = len(raw) // frame_bytes
        raise MediaError(
            "decode_error", f"{path.name}: decoded {got} of the {len(indices)} frames asked for (last {indices[-1]})"
        )
    return np.frombuffer(bytearray(raw), np.uint8).reshape(len(indices), size, size, 3)  # (N, 224, 224, 3), writable


def decode_audio(path: Path, timeout: float = 120.0) -> np.ndarray:
    """Channel 0 of the first audio stream at the file's sample rate: float32 (N,) in [-1, 1]."""
    # `af` is passed verbatim: ffmpeg-python would escape the '=' of a pan filter built with .filter().
    out = ffmpeg.output(
        ffmpeg.input(str(path))["a:0"], "pipe:", af="pan=mono|c0=c0", format="f32le", acodec="pcm_f32le"
    )
    args = out.global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-xerror").compile(cmd=ffmpeg_bin())
    raw = _run(args, path.name, "audio decoding", timeout)
    return np.frombuffer(bytearray(raw), np.float32)  # writable


def decode_image(data: bytes, name: str) -> Image.Image:
    """An RGB PIL image from encoded bytes; MediaError(decode_error) when Pillow cannot read it whole."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated JPEG fails here, not later in a resize
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError("decode_error", f"{name}: not a readable image: {e}") from None
