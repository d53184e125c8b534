"""Generate small, real, describable media and every source format the platform ingests.

Each sample is a coloured shape (circle / square / triangle) on a plain background of another
colour; in videos it moves left / right / up / down, and about half the videos carry a tone whose
pitch rises or falls. Captions say what is seen ("a red circle moves to the left"), so a model
trained on them can be checked for learning colour, shape and direction on held-out samples.

    from pipelines.sample_data import SampleDataConfig, generate
    manifest = generate(SampleDataConfig(out="/tmp/sample", videos=12, images=8, seed=0))
    manifest.root                      # the folder: videos/, images/, dataset files, manifest.json
    manifest.write_webvid_csv(path, base_url=f"{server}/files", url_for=...)  # point rows anywhere

Determinism: same seed, same bytes (see `sample_plan` for how attributes are chosen and
`sample_media` for the pinned encoder flags); growing a set keeps the files it already has.
Re-runs: a file is reused when the previous manifest describes the same sample and the file's
sha256 still matches; `manifest.json` is written last and is the completion marker.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import sample_formats, sample_media, storage
from pipelines.config import config_dataclass
from pipelines.sample_formats import DatasetFile
from pipelines.sample_plan import Sample, plan

__all__ = ["DatasetFile", "RunStats", "Sample", "SampleDataConfig", "SampleManifest", "generate"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000/files"  # the test media server serves OUT at /files/<rel>
MANIFEST = "manifest.json"
PREVIOUS = ".manifest-previous.json"  # the last complete run's manifest while a new run is in progress
OWNER_MARK = ".vllama-sample-data"  # written first: lets a re-run after a crash reuse the folder
# Bump when planning or drawing changes; with the encoder settings it says whether old files are right.
GENERATOR = f"sample-data-v1/{sample_media.ENCODER_VERSION}"


@config_dataclass
class SampleDataConfig:
    """What to generate. Defaults are the size the test suite shares (see tests/conftest.py)."""

    out: str = "data/sample"  # local folder; served as-is over HTTP by the tests
    videos: int = 12
    images: int = 8
    seed: int = 0
    # contentUrl / CC3M urls are {base_url}/{file}; tests rewrite rows for their own server.
    base_url: str = DEFAULT_BASE_URL
    # The last fraction of each kind is held out (WebVid val CSV, CC3M validation TSV) and kept
    # out of every training format; colours stay balanced in it (see `sample_plan`).
    val_fraction: float = 0.2
    workers: int = 0  # parallel encoders; 0 = one per core

    def __post_init__(self):
        if self.videos < 0 or self.images < 0 or self.videos + self.images == 0:
            raise ValueError(f"videos={self.videos}, images={self.images}: both must be >= 0 and not both 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}: must be in [0, 1), e.g. 0.2")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={self.base_url!r}: must be an http(s) URL, e.g. {DEFAULT_BASE_URL}")
        if storage.protocol(self.out) != "file":
            raise ValueError(
                f"out={self.out!r}: must be a local folder; generate locally, then copy it to object storage"
            )
        if self.workers < 0:
            raise ValueError(f"workers={self.workers}: must be >= 0 (0 = one per core)")


@dataclass(frozen=True)
class RunStats:
    made: int  # files encoded this run
    reused: int  # files kept from an earlier run
    bytes: int  # total size of the media files
    seconds: float


@dataclass(frozen=True)
class SampleManifest:
    """What `generate` made: every sample with its attributes, and the dataset files."""

    root: str
    seed: int
    base_url: str
    samples: tuple[Sample, ...]
    formats: dict[str, DatasetFile]
    stats: RunStats | None = field(default=None, compare=False)  # of the run that returned it; not saved

    @property
    def videos(self) -> tuple[Sample, ...]:
        return self.select("video")

    @property
    def images(self) -> tuple[Sample, ...]:
        return self.select("image")

    def select(self, kind: str, split: str | None = None) -> tuple[Sample, ...]:
        """Samples of one kind ("video" | "image"), optionally of one split ("train" | "val")."""
        return tuple(s for s in self.samples if s.kind == kind and split in (None, s.split))

    def path(self, rel: str) -> str:
        """Absolute local path of a file under the root (a sample's `file`, a format's `annotations`)."""
        return str(Path(self.root) / rel)

    def write_webvid_csv(
        self,
        dest: str,
        base_url: str | None = None,
        split: str | None = "train",
        url_for: Callable[[Sample], str | None] | None = None,
    ) -> str:
        """Write a WebVid CSV of this set's videos with contentUrl = {base_url}/{file}.

        `url_for(sample)` may return another URL for a row (e.g. a fault route
        `{server}/status/404/videos/x.mp4`), or None to keep the default. Returns `dest`.
        """
        rows = self.select("video", split)
        storage.write_text(dest, sample_formats.webvid_csv(rows, base_url or self.base_url, url_for))
        return dest

    def write_cc3m_tsv(
        self,
        dest: str,
        base_url: str | None = None,
        split: str | None = "train",
        url_for: Callable[[Sample], str | None] | None = None,
    ) -> str:
        """Write a Conceptual Captions TSV (caption<TAB>url, no header) of this set's images."""
        rows = self.select("image", split)
        storage.write_text(dest, sample_formats.cc3m_tsv(rows, base_url or self.base_url, url_for))
        return dest

    def to_json(self) -> str:
        doc = {
            "generator": GENERATOR,
            "seed": self.seed,
            "base_url": self.base_url,
            "counts": {"videos": len(self.videos), "images": len(self.images)},
            "formats": {k: dataclasses.asdict(v) for k, v in self.formats.items()},
            "samples": [dataclasses.asdict(s) for s in self.samples],
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def load(cls, root: str) -> SampleManifest:
        """Read `root/manifest.json` written by `generate`."""
        doc = json.loads(Path(root, MANIFEST).read_text())
        return cls(
            root=str(Path(root).resolve()),
            seed=doc["seed"],
            base_url=doc["base_url"],
            samples=tuple(Sample.from_dict(s) for s in doc["samples"]),
            formats={k: DatasetFile(**v) for k, v in doc["formats"].items()},
        )


def generate(cfg: SampleDataConfig) -> SampleManifest:
    """Write the media, the dataset files and `manifest.json` (last) under `cfg.out`."""
    t0 = time.perf_counter()
    root = _prepare_root(cfg.out)
    previous = _previous_samples(root)
    workers = cfg.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            pool.map(
                functools.partial(_materialise, root, previous),
                plan(cfg.seed, cfg.videos, cfg.images, cfg.val_fraction),
            )
        )
    samples = tuple(s for s, _ in results)
    formats = sample_formats.write_all(root, samples, cfg.base_url)
    _prune(root, samples)
    stats = RunStats(
        made=sum(made for _, made in results),
        reused=sum(not made for _, made in results),
        bytes=sum((root / s.file).stat().st_size for s in samples),
        seconds=time.perf_counter() - t0,
    )
    manifest = SampleManifest(str(root), cfg.seed, cfg.base_url, samples, formats, stats)
    storage.write_text(str(root / MANIFEST), manifest.to_json())
    (root / PREVIOUS).unlink(missing_ok=True)
    return manifest


def _prepare_root(out: str) -> Path:
    root = Path(out.removeprefix("file://")).resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder; choose a folder for the sample data")
    owned = (root / OWNER_MARK).exists()
    if root.is_dir() and any(root.iterdir()) and not owned:
        raise FileExistsError(
            f"{out}: folder is not empty and was not made by sample-data; choose a new or empty folder "
            "(a re-run replaces stale files in the folders it owns)"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / OWNER_MARK).touch()
    return root


def _previous_samples(root: Path) -> dict[str, Sample]:
    """Samples of the last complete run with the same generator, by file.

    The manifest is moved aside first, so while this run changes files there is no
    `manifest.json` claiming the folder is complete; a crash leaves the old one for the next run.
    """
    if (root / MANIFEST).exists():
        os.replace(root / MANIFEST, root / PREVIOUS)
    try:
        doc = json.loads((root / PREVIOUS).read_text())
        if doc.get("generator") != GENERATOR:
            return {}
        return {s["file"]: Sample.from_dict(s) for s in doc["samples"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no manifest or an unreadable one: everything is made afresh


def _materialise(root: Path, previous: dict[str, Sample], sample: Sample) -> tuple[Sample, bool]:
    """Write the sample's file unless an identical one is already there; place its format copies."""
    dest = root / sample.file
    old = previous.get(sample.file)
    reusable = (
        old is not None
        and dataclasses.replace(old, sha256="", split=sample.split) == sample  # the split is not in the bytes
        and dest.is_file()
        and sample_media.sha256_file(dest) == old.sha256
    )
    if reusable:
        done, made = dataclasses.replace(old, split=sample.split), False
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        encode = sample_media.encode_video if sample.kind == "video" else sample_media.encode_jpeg
        done, made = dataclasses.replace(sample, sha256=encode(sample, dest)), True
    for rel in sample_formats.media_links(done):
        _place(dest, root / rel)
    return done, made


def _place(src: Path, dst: Path) -> None:
    """Make `dst` hold `src`'s bytes: a hard link (no extra space), or a copy where links fail."""
    if dst.is_file() and (dst.samefile(src) or dst.read_bytes() == src.read_bytes()):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _prune(root: Path, samples: tuple[Sample, ...]) -> None:
    """Remove files in the media folders that no sample of this set owns (a smaller re-run, a crash)."""
    wanted = {root / s.file for s in samples}
    wanted |= {root / rel for s in samples for rel in sample_formats.media_links(s)}
    for folder in sample_formats.MEDIA_DIRS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path not in wanted:
                path.unlink()
