"""Draw and encode one describable sample: a coloured shape on a plain background.

Videos are raw RGB frames drawn with numpy and piped into ffmpeg (libx264, yuv420p); where a
video has sound, ffmpeg's `aevalsrc` synthesises a tone whose pitch rises or falls linearly,
encoded as AAC. Every flag that would make the bytes vary between runs is pinned: one x264
thread, `+bitexact` on the muxer and both encoders, no metadata. Images are JPEGs from Pillow.

Each writer writes to a temporary name beside the target, hashes it, then renames it, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import ffmpeg  # ffmpeg-python
import numpy as np
from PIL import Image

from pipelines.media import ffmpeg_bin

if TYPE_CHECKING:
    from pipelines.sample_plan import Sample

# Clearly distinct colours, far apart in RGB so they survive yuv420p and JPEG chroma subsampling
# (the closest pair, red/orange, differs by 120 in green). Order is fixed: it is part of the format.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (250, 225, 0),
    "purple": (140, 40, 180),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
PITCHES = ("rising", "falling")
# How captions and answers say a direction ("a red circle moves to the left").
DIRECTION_PHRASE = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


def with_article(word: str) -> str:
    """`word` with its indefinite article: "a red", "an orange"."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


# Encoder settings. Changing any of these changes the bytes, so they feed ENCODER_VERSION,
# which the generator records to know when files from an earlier run are still right.
X264_PRESET = "veryfast"  # keeps B-frames and CABAC (like real web video) at ~1000 fps for these sizes
X264_CRF = 20
AAC_BITRATE = "64k"
JPEG_QUALITY = 90
ENCODER_VERSION = f"x264-{X264_PRESET}-crf{X264_CRF}-aacfast{AAC_BITRATE}-s16-jpeg{JPEG_QUALITY}-v1"


class EncodeError(RuntimeError):
    """ffmpeg failed on one sample; the message names the file and carries ffmpeg's error."""


def shape_mask(shape: str, size: int) -> np.ndarray:
    """A (size, size) boolean mask of `shape` filling its box."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    if shape == "circle":
        r = size / 2
        return (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex at top centre, base along the bottom row
        half_width = yy / 2  # the width grows linearly from 0 at the apex to `size` at the base
        return np.abs(xx - size / 2) <= half_width
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def box_origin(sample: Sample, k: int) -> tuple[int, int]:
    """Top-left (x, y) of the shape's box in frame k: the centre moves linearly from start to end."""
    t = k / (sample.frames - 1) if sample.frames > 1 else 0.0
    cx = sample.start[0] + (sample.end[0] - sample.start[0]) * t
    cy = sample.start[1] + (sample.end[1] - sample.start[1]) * t
    half = sample.size // 2
    return round(cx) - half, round(cy) - half


def _canvas(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The plain background frame and the shape's patch (shape over background) for `sample`."""
    bg = np.array(PALETTE[sample.background], dtype=np.uint8)
    fg = np.array(PALETTE[sample.colour], dtype=np.uint8)
    frame = np.broadcast_to(bg, (sample.height, sample.width, 3)).copy()  # (H, W, 3)
    patch = np.where(shape_mask(sample.shape, sample.size)[..., None], fg, bg).astype(np.uint8)  # (S, S, 3)
    return frame, patch


def draw_image(sample: Sample) -> np.ndarray:
    """The (H, W, 3) uint8 RGB picture of an image sample (or of a video's first frame)."""
    frame, patch = _canvas(sample)
    x, y = box_origin(sample, 0)
    frame[y : y + sample.size, x : x + sample.size] = patch
    return frame


def iter_frames(sample: Sample) -> Iterator[np.ndarray]:
    """Yield the video's frames as (H, W, 3) uint8 arrays.

    One buffer is reused: the previous box is painted back to background before the shape
    is pasted at its new place, so a frame costs two small copies, not a full redraw.
    """
    frame, patch = _canvas(sample)
    bg_box = np.broadcast_to(frame[0, 0].copy(), patch.shape)  # the plain background colour
    prev = None
    for k in range(sample.frames):
        if prev is not None:
            frame[prev[1] : prev[1] + sample.size, prev[0] : prev[0] + sample.size] = bg_box
        x, y = box_origin(sample, k)
        frame[y : y + sample.size, x : x + sample.size] = patch
        prev = (x, y)
        yield frame


def tone_expr(sample: Sample) -> str:
    """An `aevalsrc` source: a sine whose frequency moves linearly from tone_hz[0] to tone_hz[1].

    Phase is the integral of f(t) = f0 + (f1 - f0) t / D, i.e. 2 pi (f0 t + (f1 - f0) t^2 / 2D).
    """
    assert sample.tone_hz is not None and sample.sample_rate is not None and sample.duration is not None
    f0, f1 = sample.tone_hz
    slope = (f1 - f0) / (2 * sample.duration)
    expr = f"0.3*sin(2*PI*t*({f0:.3f}{slope:+.6f}*t))"
    return f"aevalsrc={expr}:s={sample.sample_rate}:d={sample.duration:.6f}"


def _ffmpeg_args(sample: Sample, dest: str) -> list[str]:
    assert sample.fps is not None
    video = ffmpeg.input(
        "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{sample.width}x{sample.height}", framerate=sample.fps
    )
    inputs = [video]
    opts: dict = {
        "vcodec": "libx264",
        "pix_fmt": "yuv420p",
        "preset": X264_PRESET,
        "crf": X264_CRF,
        "g": 2 * sample.fps,  # a keyframe every 2 s, so frame-accurate seeks stay cheap
        "threads": 1,  # x264 with more threads is not bit-reproducible
        "flags:v": "+bitexact",
        "fflags": "+bitexact",  # no encoder version string in the container
        "map_metadata": -1,
        "movflags": "+faststart",  # moov first, as web servers serve mp4
        "format": "mp4",
    }
    if sample.has_audio:
        # 16-bit like real recordings; AAC also encodes a double-precision pure tone twice as slowly
        inputs.append(ffmpeg.input(tone_expr(sample), format="lavfi").filter("aformat", sample_fmts="s16"))
        opts.update({"acodec": "aac", "aac_coder": "fast", "ac": 1, "b:a": AAC_BITRATE, "flags:a": "+bitexact"})
    out = ffmpeg.output(*inputs, dest, **opts)
    out = out.global_args(
        "-nostdin", "-hide_banner", "-loglevel", "error", "-filter_threads", "1", "-filter_complex_threads", "1"
    )
    return out.overwrite_output().compile(cmd=ffmpeg_bin())


def encode_video(sample: Sample, dest: Path) -> str:
    """Encode `sample` to the mp4 `dest`; return the file's sha256.

    Frames are streamed to ffmpeg's stdin one at a time (memory stays at one frame); its
    stderr goes to a temporary file, so a chatty failure can never block the pipe.
    """
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                _ffmpeg_args(sample, str(tmp)), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
            )
            try:
                for frame in iter_frames(sample):
                    proc.stdin.write(frame.data)
            except BrokenPipeError:
                pass  # ffmpeg exited early; its return code and stderr say why
            finally:
                proc.stdin.close()
            if proc.wait() != 0:
                err.seek(0)
                message = err.read().decode("utf-8", "replace").strip()[-2000:]
                raise EncodeError(f"{dest}: ffmpeg exited with {proc.returncode}: {message}")
        digest = sha256_file(tmp)
        os.replace(tmp, dest)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def encode_jpeg(sample: Sample, dest: Path) -> str:
    """Write the image sample as a JPEG (no EXIF, fixed quality); return its sha256."""
    buf = io.BytesIO()
    Image.fromarray(draw_image(sample)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    data = buf.getvalue()
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
