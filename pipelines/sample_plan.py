"""What the sample-data generator makes: every sample's attributes, chosen before any file is written.

A sample's attributes depend only on (seed, kind, index), never on how many samples are asked
for, so a larger set keeps every file of a smaller one. Colour, shape, direction, audio and
pitch are balanced over every run of consecutive samples (see `balanced`), so any prefix, and
the held-out tail, has each colour within one of the others.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np

from pipelines.sample_media import DIRECTION_PHRASE, DIRECTIONS, PALETTE, PITCHES, SHAPES, with_article

COLOURS = tuple(PALETTE)
# Sizes cover 4:3, 16:9 and one portrait clip; all even, as yuv420p needs.
VIDEO_SIZES = (
    (160, 120),
    (192, 108),
    (240, 180),
    (256, 144),
    (320, 180),
    (320, 240),
    (384, 216),
    (480, 270),
    (144, 256),
)
IMAGE_SIZES = ((224, 224), (256, 192), (320, 240), (400, 300), (480, 270), (240, 320))
FPS_CHOICES = (8, 10, 12, 15, 20, 24, 25, 30)
SECONDS = (1.5, 6.0)
SAMPLE_RATES = (16000, 22050, 44100)  # 16 kHz is what ImageBind wants; the others exercise resampling
VIDEO_ID_BASE = 1_000_000_000  # WebVid ids are 9-10 digit integers
VIDEOS_PER_PAGE_DIR = 5  # small, so even a dozen videos spread over several page_dir folders


@dataclass(frozen=True)
class Sample:
    """One generated video or image and everything needed to check its content."""

    id: str  # WebVid videoid for videos, CC3M-style GCC_train_NNNNNNNNN for images
    index: int  # position within its kind; format-specific names derive from it
    kind: str  # "video" | "image"
    split: str  # "train" | "val"
    colour: str
    shape: str
    direction: str | None  # videos only
    background: str
    pitch: str | None  # "rising" | "falling" where has_audio
    has_audio: bool
    width: int
    height: int
    fps: int | None  # videos only
    duration: float | None  # seconds = frames / fps; videos only
    frames: int  # 1 for images
    caption: str
    file: str  # path under the root
    size: int  # side of the shape's square box, pixels
    start: tuple[int, int]  # (x, y) centre of the shape in the first frame
    end: tuple[int, int]  # ... and in the last frame (== start for images)
    sample_rate: int | None = None
    tone_hz: tuple[float, float] | None = None  # tone frequency at the start and at the end
    page_dir: str | None = None  # WebVid's folder for this video, e.g. 000001_000050
    sha256: str = ""  # filled in once the file is written

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        d = dict(d)
        for key in ("start", "end", "tone_hz"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@functools.lru_cache(maxsize=4096)
def _block(seed: int, stream: str, block: int, n: int) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode()), block])
    return tuple(int(v) for v in rng.permutation(n))


def balanced(seed: int, stream: str, i: int, n: int) -> int:
    """A value in range(n) for item i: every run of n consecutive items is a seeded permutation.

    So any prefix of a set is balanced to within one per value, and item i's value never
    depends on how many items are generated. Separate streams keep attributes independent.
    """
    return _block(seed, stream, i // n, n)[i % n]


def _background(rng: np.random.Generator, colour: str) -> str:
    others = [c for c in COLOURS if c != colour]
    return others[int(rng.integers(len(others)))]


def _track(rng: np.random.Generator, direction: str, w: int, h: int, size: int):
    """Start and end centres: across most of the frame along the motion, on a random line across it."""
    margin = size / 2 + 2  # keeps the whole box inside the frame
    along, across = (w, h) if direction in ("left", "right") else (h, w)
    a = margin + rng.uniform(0.0, 0.1) * along
    b = along - margin - rng.uniform(0.0, 0.1) * along
    c = rng.uniform(margin, across - margin)
    first, last = (b, a) if direction in ("left", "up") else (a, b)  # image y grows downwards
    if direction in ("left", "right"):
        return (round(first), round(c)), (round(last), round(c))
    return (round(c), round(first)), (round(c), round(last))


def _split(index: int, n: int, val_fraction: float) -> str:
    """The last round(n * val_fraction) items (at least one when there are two or more) are held out."""
    n_val = 0 if val_fraction == 0 or n < 2 else max(1, round(n * val_fraction))
    return "val" if index >= n - n_val else "train"


def plan_video(seed: int, i: int, n: int, val_fraction: float) -> Sample:
    rng = np.random.default_rng([seed, zlib.crc32(b"video"), i])
    colour = COLOURS[balanced(seed, "video.colour", i, len(COLOURS))]
    shape = SHAPES[balanced(seed, "video.shape", i, len(SHAPES))]
    direction = DIRECTIONS[balanced(seed, "video.direction", i, len(DIRECTIONS))]
    has_audio = balanced(seed, "video.audio", i, 2) == 0  # exactly one of each consecutive pair
    pitch = PITCHES[balanced(seed, "video.pitch", i, len(PITCHES))]
    background = _background(rng, colour)
    width, height = VIDEO_SIZES[int(rng.integers(len(VIDEO_SIZES)))]
    fps = FPS_CHOICES[int(rng.integers(len(FPS_CHOICES)))]
    frames = int(rng.integers(math.ceil(SECONDS[0] * fps), math.floor(SECONDS[1] * fps) + 1))
    size = 2 * round(rng.uniform(0.15, 0.2) * min(width, height))  # 30-40 % of the short side
    start, end = _track(rng, direction, width, height, size)
    sample_rate = SAMPLE_RATES[int(rng.integers(len(SAMPLE_RATES)))]
    low = float(round(rng.uniform(220.0, 440.0), 1))
    tone = (low, 2 * low) if pitch == "rising" else (2 * low, low)  # an octave up or down
    videoid = str(VIDEO_ID_BASE + i)
    page = i // VIDEOS_PER_PAGE_DIR
    return Sample(
        id=videoid,
        index=i,
        kind="video",
        split=_split(i, n, val_fraction),
        colour=colour,
        shape=shape,
        direction=direction,
        background=background,
        pitch=pitch if has_audio else None,
        has_audio=has_audio,
        width=width,
        height=height,
        fps=fps,
        duration=frames / fps,
        frames=frames,
        caption=f"{with_article(colour)} {shape} moves {DIRECTION_PHRASE[direction]}",
        file=f"videos/{videoid}.mp4",
        size=size,
        start=start,
        end=end,
        sample_rate=sample_rate if has_audio else None,
        tone_hz=tone if has_audio else None,
        page_dir=f"{page * 50 + 1:06d}_{page * 50 + 50:06d}",
    )


def plan_image(seed: int, j: int, n: int, val_fraction: float) -> Sample:
    rng = np.random.default_rng([seed, zlib.crc32(b"image"), j])
    colour = COLOURS[balanced(seed, "image.colour", j, len(COLOURS))]
    shape = SHAPES[balanced(seed, "image.shape", j, len(SHAPES))]
    background = _background(rng, colour)
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    size = 2 * round(rng.uniform(0.175, 0.25) * min(width, height))  # 35-50 % of the short side
    margin = size / 2 + 2
    centre = (round(rng.uniform(margin, width - margin)), round(rng.uniform(margin, height - margin)))
    image_id = f"GCC_train_{j:09d}"
    return Sample(
        id=image_id,
        index=j,
        kind="image",
        split=_split(j, n, val_fraction),
        colour=colour,
        shape=shape,
        direction=None,
        background=background,
        pitch=None,
        has_audio=False,
        width=width,
        height=height,
        fps=None,
        duration=None,
        frames=1,
        caption=f"{with_article(colour)} {shape} on {with_article(background)} background",
        file=f"images/{image_id}.jpg",
        size=size,
        start=centre,
        end=centre,
    )


def plan(seed: int, videos: int, images: int, val_fraction: float) -> list[Sample]:
    """Every sample of a set, videos first, without touching the disk."""
    return [plan_video(seed, i, videos, val_fraction) for i in range(videos)] + [
        plan_image(seed, j, images, val_fraction) for j in range(images)
    ]
