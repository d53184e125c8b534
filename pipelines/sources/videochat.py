"""VideoChat-11K (`videochat_instruct_11k.json`) as a `media_sets` format, and finding its videos
in the WebVid shards `vllama ingest webvid` wrote.

Entries are `{"video": "<page_dir>/<videoid>.mp4", "QA": [{"q", "a"}, ...]}`; Video-LLaMA joins
`video` to its videos folder and puts the video's query tokens before the first question
(`"<Video>...</Video> " + q`). The normalised `turns` do the same with a `<video>` marker.

Videos come from a folder (`media`, WebVid's own page_dir/videoid layout) or from WebVid shards
(`webvid_shards`): their sidecars say which shard holds each (page_dir, videoid) (`webvid_index`),
one header scan of each such tar gives the member's byte range (`member_ranges`), and each
shard task then reads exactly those bytes.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from pipelines import shards, storage
from pipelines.shard_runs import ShardTask
from pipelines.sources.media_sets import LOCATION_COLUMNS, Entry, SetFormat, safe_media_path
from pipelines.storage import StorageConfig

VIDEO_MARKER = "<video>"


def turns(qa: Any) -> list[list[str]]:
    """[[q, a], ...] with the marker before the first question; ValueError naming what is wrong."""
    if not isinstance(qa, list) or not qa:
        raise ValueError("'QA' is missing or not a non-empty list")
    pairs = []
    for i, item in enumerate(qa):
        if not isinstance(item, dict) or not isinstance(item.get("q"), str) or not isinstance(item.get("a"), str):
            raise ValueError(f"QA item {i} needs string 'q' and 'a'")
        pairs.append([item["q"], item["a"]])
    pairs[0][0] = f"{VIDEO_MARKER} {pairs[0][0]}"
    return pairs


def split_video_path(rel: str) -> tuple[str, str]:
    """`000001_000050/1000000003.mp4` -> (page_dir, videoid)."""
    page_dir, name = posixpath.split(rel)
    return page_dir, posixpath.splitext(name)[0]


def entries(doc: Any) -> Iterator[Entry]:
    if not isinstance(doc, list):
        raise ValueError(f'expected a JSON list of {{"video", "QA"}} entries, got {type(doc).__name__}')
    for item in doc:
        video = item.get("video") if isinstance(item, dict) else None
        try:
            if not isinstance(item, dict):
                raise ValueError(f"entry is a {type(item).__name__}, not an object")
            rel = safe_media_path(video)
            pairs = turns(item.get("QA"))
        except ValueError as e:
            yield Entry(split_video_path(video)[1] if isinstance(video, str) else "", "", item, problem=str(e))
            continue
        yield Entry(split_video_path(rel)[1], rel, item, {"turns": pairs, "media_marker": VIDEO_MARKER})


FORMAT = SetFormat("videochat", "video", entries)


# ---------------------------------------------------------------------------------- WebVid shards


def webvid_index(
    folders: Sequence[str], wanted: set[tuple[str, str]], storage_cfg: StorageConfig | None = None, threads: int = 16
) -> dict[tuple[str, str], tuple[str, str]]:
    """(page_dir, videoid) -> (tar URI, sample key) for each wanted video that a complete WebVid shard
    holds; the first folder, then the lowest shard, wins."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for folder in folders:
        done = shards.complete_shards(folder, storage_cfg)
        if not done:
            raise ValueError(f"webvid_shards: {folder} holds no complete shard; run `vllama ingest webvid` first")

        def ok_rows(i: int, folder: str = folder) -> list[dict]:
            table = shards.read_sidecar(folder, i, storage_cfg).select(["key", "page_dir", "videoid", "status"])
            return [r for r in table.to_pylist() if r["status"] == shards.OK]

        with ThreadPoolExecutor(threads) as pool:
            for i, rows in zip(done, pool.map(ok_rows, done), strict=True):
                for r in rows:
                    where = (r["page_dir"], r["videoid"])
                    if where in wanted and where not in found:
                        found[where] = (shards.shard_files(folder, i).tar, r["key"])
    return found


def member_ranges(tar_uri: str, names: set[str], storage_cfg: StorageConfig | None = None) -> dict[str, tuple]:
    """name -> (byte offset, size) of each named member, from the tar's headers only: tarfile seeks
    over member data, and small blocks keep each header read to one small range request on S3."""
    fs, path = storage.filesystem(tar_uri, storage_cfg)
    ranges: dict[str, tuple[int, int]] = {}
    with fs.open(path, "rb", block_size=1 << 16) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            if info.name in names:
                ranges[info.name] = (info.offset_data, info.size)
                if len(ranges) == len(names):
                    break
    return ranges


def locate_in_webvid(
    tasks: Sequence[ShardTask], folders: Sequence[str], threads: int = 16, storage_cfg: StorageConfig | None = None
) -> list[ShardTask]:
    """The tasks with LOCATION_COLUMNS filled for each row whose video is in a WebVid shard ("" / -1 if not)."""
    rels = [r for t in tasks for r, c in zip(t.rows.column("media").to_pylist(), t.rows.column("category").to_pylist(),
                                              strict=True) if not c]  # fmt: skip
    index = webvid_index(folders, {split_video_path(r) for r in rels}, storage_cfg, threads)
    by_tar: dict[str, set[str]] = {}
    for tar_uri, key in index.values():
        by_tar.setdefault(tar_uri, set()).add(f"{key}.mp4")
    with ThreadPoolExecutor(threads) as pool:
        ranges = dict(zip(by_tar, pool.map(lambda t: member_ranges(t, by_tar[t], storage_cfg), by_tar), strict=True))
    located = []
    for task in tasks:
        uris, offsets, sizes = [], [], []
        for rel in task.rows.column("media").to_pylist():
            tar_uri, key = index.get(split_video_path(rel), ("", ""))
            offset, size = ranges.get(tar_uri, {}).get(f"{key}.mp4", (-1, -1))
            uris.append(tar_uri if offset >= 0 else "")
            offsets.append(offset)
            sizes.append(size)
        rows = task.rows.drop_columns([c for c in LOCATION_COLUMNS if c in task.rows.column_names])
        columns = {"media_uri": pa.array(uris, pa.string()), "media_offset": pa.array(offsets, pa.int64()),
                   "media_size": pa.array(sizes, pa.int64())}  # fmt: skip
        for name, values in columns.items():
            rows = rows.append_column(name, values)
        located.append(ShardTask(task.index, rows))
    return located
