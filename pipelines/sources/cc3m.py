"""Conceptual Captions (CC3M) TSVs -> webdataset shards of resized jpg + caption, through img2dataset.

    read_rows(uris)          TSV lines (caption<TAB>url, no header, as Google ships them) -> input rows
    screen(rows, cfg)        our input hygiene, before img2dataset sees a URL: http(s) only, and no
                             host that resolves to a loopback/private/link-local address
    shard_runs.plan(...)     rows -> the shards this run writes (incremental / overwrite / retry-failed)
    img2dataset_run          stage the fetchable rows, `img2dataset.download` them (resize, webdataset),
                             then commit each shard in our conventions on Ray Data
    run(cfg)                 all of it, then the run summary (images/s)

Per sample the tar holds `<key>.jpg` (img2dataset's resize, short side `image_size`), `<key>.txt`
(the caption cleaned as Video-LLaMA's caption processor does) and `<key>.json` (url, raw caption,
width, height, original size, sha256 of the downloaded file). The key is `key_prefix` + the row's
9-digit position in the input, `GCC_train_000000123` by default: the 0-based line of
Train_GCC-training.tsv, which is how LLaVA-CC3M-595K names the same images.

What img2dataset does not do, and this source therefore does not either: honour Retry-After or back
off (its retries are immediate), cap a response's size (a body is read whole into memory), check
Content-Type (an HTML page fails later, at decoding), limit connections per host, or check the
addresses redirects lead to (the first URL's host is checked here; urllib follows redirects itself).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from urllib.parse import urlsplit

import pyarrow as pa

from model.captions import clean_caption
from pipelines import download, ingest, shard_runs, shards, storage
from pipelines.config import config_dataclass
from pipelines.shard_runs import Mode
from pipelines.sources import img2dataset_run
from pipelines.sources.img2dataset_run import Img2DatasetConfig
from pipelines.storage import StorageConfig

log = logging.getLogger(__name__)


@config_dataclass
class CC3MIngestConfig:
    """One CC3M ingestion run. Required: `tsv` and `out`."""

    tsv: tuple[str, ...] | str = ()  # Conceptual Captions TSVs (local or s3://, globs, .gz), read in the order given
    out: str = ""  # shard folder (local or s3://)
    mode: Mode = Mode.INCREMENTAL
    samples_per_shard: int = 10_000  # ~10k images of ~20 KB at 224 px: ~200 MB tars (img2dataset's default count)
    key_prefix: str = "GCC_train_"  # GCC_val_ for the validation TSV, so keys never collide across splits
    # Where img2dataset writes before the commit; every node must reach it. None: <out>/_img2dataset.
    staging: str | None = None
    allow_networks: tuple[str, ...] = ()  # CIDRs exempt from the refusal of non-public addresses
    resolve_threads: int = 32  # DNS lookups at once while screening (one per distinct host)
    max_caption_words: int = 50
    concurrency: int | None = None  # commit tasks at once; None lets Ray Data use every CPU
    progress: bool = True
    img2dataset: Img2DatasetConfig = field(default_factory=Img2DatasetConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self):
        if not self.out:
            raise ValueError("out: required, the folder or s3:// prefix to write shards into")
        if not self.tsvs and self.mode != Mode.RETRY_FAILED:
            raise ValueError("tsv: required, one or more Conceptual Captions TSV paths or s3:// URIs (globs allowed)")
        if self.samples_per_shard < 1 or self.resolve_threads < 1:
            raise ValueError("samples_per_shard and resolve_threads must be >= 1")
        download.DownloadConfig(allow_networks=self.allow_networks)  # the same CIDR check and message

    @property
    def tsvs(self) -> tuple[str, ...]:
        return (self.tsv,) if isinstance(self.tsv, str) else self.tsv

    @property
    def staging_uri(self) -> str:
        return self.staging or storage.join(self.out, "_img2dataset")


# ---------------------------------------------------------------------------------- read


def tsv_uris(patterns: tuple[str, ...], storage_cfg: StorageConfig | None = None) -> list[str]:
    """Expand globs (sorted within each pattern), keeping the given order; a glob that matches
    nothing is an error naming it."""
    uris = []
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            uris.append(pattern)
            continue
        fs, path = storage.filesystem(pattern, storage_cfg)
        found = sorted(fs.glob(path))
        if not found:
            raise FileNotFoundError(f"{pattern}: no TSV matches")
        scheme = storage.protocol(pattern)
        uris += [f"{scheme}://{p}" if scheme != "file" else p for p in found]
    return uris


def read_rows(uris: list[str], key_prefix: str = "GCC_train_", storage_cfg: StorageConfig | None = None) -> pa.Table:
    """Every non-blank line of every TSV, numbered in order; malformed lines are kept as failed rows."""
    cols: dict[str, list] = {k: [] for k in ("row", "key", "source", "category", "error", "caption", "url")}
    for uri in uris:
        fs, path = storage.filesystem(uri, storage_cfg)
        with fs.open(path, "rt", encoding="utf-8", errors="replace", compression="infer") as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                caption, url = (fields[0].strip(), fields[1].strip()) if len(fields) == 2 else ("", "")
                category, error = "", ""
                if len(fields) != 2:
                    category, error = "bad_row", f"expected caption<TAB>url, got {len(fields)} tab-separated fields"
                elif not url:
                    category, error = "bad_url", "url is empty"
                row = len(cols["row"])
                cols["row"].append(row)
                cols["key"].append(shards.sanitize_key(f"{key_prefix}{row:09d}"))
                cols["source"].append(f"{uri} line {line_no}")
                cols["category"].append(category)
                cols["error"].append(f"{uri} line {line_no}: {error}" if error else "")
                cols["caption"].append(caption)
                cols["url"].append(url)
    for i, reason in shards.mark_duplicates(cols["key"], cols["source"]).items():
        cols["category"][i], cols["error"][i] = "duplicate", reason  # only if a key_prefix makes keys collide
    return shards.input_table(cols)


# ---------------------------------------------------------------------------------- hygiene


def _host_problem(host: str, port: int, allow_networks: tuple[str, ...]) -> tuple[str, str] | None:
    try:
        download.resolve(host, port, allow_networks)
    except download.FetchError as e:
        return e.category, str(e)
    return None


def screen(rows: pa.Table, allow_networks: tuple[str, ...] = (), threads: int = 32) -> pa.Table:
    """Set the category of every row img2dataset must not fetch: not http(s), no host, or a host that
    resolves to a non-public address (unless `allow_networks` covers it). One DNS lookup per host."""
    urls, cats, errors = (rows.column(c).to_pylist() for c in ("url", "category", "error"))
    sources = rows.column("source").to_pylist()
    targets: dict[int, tuple[str, int]] = {}
    for i, url in enumerate(urls):
        if cats[i]:
            continue
        try:
            scheme = download.check_url(url)
            if scheme not in ("http", "https"):
                raise download.FetchError(
                    "bad_url", f"{url!r}: only http(s) URLs are fetched (img2dataset uses urllib)"
                )
            parts = urlsplit(url.strip())
            targets[i] = (parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        except download.FetchError as e:
            cats[i], errors[i] = e.category, f"{sources[i]}: {e}"
    hosts = sorted(set(targets.values()))
    with ThreadPoolExecutor(threads) as pool:
        problems = dict(zip(hosts, pool.map(lambda hp: _host_problem(*hp, allow_networks), hosts), strict=True))
    for i, host in targets.items():
        if problems[host]:
            cats[i], errors[i] = problems[host][0], f"{sources[i]}: {problems[host][1]}"
    for name, values in (("category", cats), ("error", errors)):
        rows = rows.set_column(rows.column_names.index(name), name, pa.array(values, pa.string()))
    return rows


def _screen_tasks(tasks: list[shard_runs.ShardTask], cfg: CC3MIngestConfig) -> list[shard_runs.ShardTask]:
    """`screen` every planned row at once (one DNS lookup per host for the whole run), split back per shard."""
    if not tasks:
        return tasks
    screened = screen(pa.concat_tables([t.rows for t in tasks]), cfg.allow_networks, cfg.resolve_threads)
    starts = [0]
    for t in tasks:
        starts.append(starts[-1] + t.rows.num_rows)
    return [
        shard_runs.ShardTask(t.index, screened.slice(a, t.rows.num_rows)) for t, a in zip(tasks, starts, strict=False)
    ]


# ---------------------------------------------------------------------------------- run


def run(cfg: CC3MIngestConfig) -> shard_runs.RunSummary:
    """Read and screen the TSVs, plan the shards for `cfg.mode`, fetch with img2dataset, commit, summarise."""
    t0 = time.monotonic()
    inputs = [] if cfg.mode == Mode.RETRY_FAILED else tsv_uris(cfg.tsvs, cfg.storage)
    rows = read_rows(inputs, cfg.key_prefix, cfg.storage) if inputs else None
    tasks = shard_runs.plan(cfg.out, rows, cfg.mode, cfg.samples_per_shard, inputs, cfg.storage)
    tasks = _screen_tasks(tasks, cfg)
    stats, failures = [], {}
    if tasks:
        # img2dataset imports albumentations, which asks PyPI for a newer version unless this is set;
        # Ray workers started by this process inherit it (a cluster's image should set it too)
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        ingest.init_ray()
        staged = img2dataset_run.stage(tasks, cfg.staging_uri, cfg.storage)
        if staged:
            fetchable = {j: sum(not c for c in t.rows.column("category").to_pylist())
                         for t in tasks if (j := staged.get(t.index)) is not None}  # fmt: skip
            try:
                img2dataset_run.download(
                    cfg.img2dataset, cfg.staging_uri, cfg.samples_per_shard, fetchable, cfg.storage, cfg.progress
                )
            except Exception as e:  # shards it finished are still committed; the others get no marker
                log.warning("img2dataset stopped early: %s: %s", type(e).__name__, e)
        commit = functools.partial(
            img2dataset_run.commit_shard, out=cfg.out, staging=cfg.staging_uri, staged=staged,
            retries=cfg.img2dataset.retries, clean=functools.partial(clean_caption, max_words=cfg.max_caption_words),
            storage_cfg=cfg.storage,
        )  # fmt: skip
        stats, failures = ingest.run_shards(
            tasks, commit, concurrency=cfg.concurrency, progress=cfg.progress, desc=f"cc3m commit {cfg.mode.value}"
        )
        if not failures:
            img2dataset_run.clear(cfg.staging_uri, cfg.storage)
    return shard_runs.finish_run(cfg.out, cfg.mode, stats, time.monotonic() - t0, cfg.storage, failures)
