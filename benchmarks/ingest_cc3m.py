"""CC3M ingestion throughput (images/s) against img2dataset alone on the same URLs.

    .venv/bin/python -m benchmarks.ingest_cc3m [--images 500] [--runs 3] [--quick] [--results DIR] [--work DIR]

Generates a sample set of JPEGs (pipelines.sample_data), serves it over HTTP on loopback, writes a
Conceptual Captions TSV of it, and measures on a local Ray (one CPU per core):

- the pipeline: `vllama ingest cc3m` (read and screen the TSV, stage, img2dataset with its Ray
  distributor, commit each shard in our layout, summary);
- the limit: `img2dataset.download` alone over the same URLs with the same settings (distributor,
  threads, resize), writing its own webdataset; what is left is the cost of our conventions.

Each figure is the median of --runs runs after one warm-up run (Ray starts its workers and they
import img2dataset then), with the 1-minute load average at the start of each run. The sample
images are small (a few KB): the figures measure the pipeline's overheads more than JPEG
decoding, which dominates on real CC3M images (100 KB-1 MB).
Writes <results>/ingest_cc3m.json (benchmarks/run.py runs it as the `ingest_cc3m` section).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from benchmarks.common import RESULTS, WORK, StaticServer, load_1m, machine
from pipelines.sample_data import SampleDataConfig, generate
from pipelines.sources import cc3m
from pipelines.sources.cc3m import CC3MIngestConfig

SHARD = 250  # images per shard: several shards per worker, as at full scale
THREADS = 16
IMG2DATASET = {"distributor": "ray", "threads": THREADS, "image_size": 224, "resize_mode": "keep_ratio",
               "resize_only_if_bigger": True, "timeout_s": 10.0, "retries": 0}  # fmt: skip


def pipeline_run(tsv: str, n: int, work: Path) -> float:
    """One `vllama ingest cc3m` run from scratch; its seconds."""
    cfg = CC3MIngestConfig(tsv=(tsv,), out=str(work / "shards"), mode="overwrite", samples_per_shard=SHARD,
                           allow_networks=("127.0.0.0/8",), progress=False, img2dataset=IMG2DATASET)  # fmt: skip
    t0 = time.perf_counter()
    summary = cc3m.run(cfg)
    seconds = time.perf_counter() - t0
    assert summary.ok == n, f"only {summary.ok} of {n} images ingested: {summary.categories}"
    return seconds


def img2dataset_run(urls: list[str], captions: list[str], work: Path) -> float:
    """`img2dataset.download` alone over the same URLs and settings; its seconds."""
    import img2dataset

    shutil.rmtree(work / "plain", ignore_errors=True)
    (work / "plain" / "in").mkdir(parents=True)
    for k in range(0, len(urls), SHARD):  # the same shards as the pipeline hands it
        part = pa.table({"url": urls[k : k + SHARD], "caption": captions[k : k + SHARD]})
        pq.write_table(part, work / "plain" / "in" / f"{k // SHARD:08d}.parquet")
    t0 = time.perf_counter()
    img2dataset.download(
        url_list=str(work / "plain" / "in"), input_format="parquet", url_col="url", caption_col="caption",
        output_folder=str(work / "plain" / "out"), output_format="webdataset", number_sample_per_shard=SHARD,
        distributor="ray", thread_count=THREADS, image_size=224, resize_mode="keep_ratio",
        resize_only_if_bigger=True, timeout=10, retries=0, extract_exif=False, compute_hash="sha256",
    )  # fmt: skip
    return time.perf_counter() - t0


def measure(label: str, fn, runs: int, n: int, warmup: bool = True) -> dict:
    if warmup:
        fn()  # Ray workers start and import img2dataset
    seconds, loads = [], []
    for _ in range(runs):
        loads.append(load_1m())
        seconds.append(fn())
        print(f"  {label}: {seconds[-1]:.2f} s (load {loads[-1]})", flush=True)
    med = statistics.median(seconds)
    return {"seconds": [round(s, 3) for s in seconds], "load_1m": loads, "median_s": round(med, 3),
            "images_per_s": round(n / med, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="generated JPEGs (500 keeps make bench < 20 min)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 images, 1 run, no warm-up: machinery only")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK / "ingest_cc3m")
    args = parser.parse_args()
    if args.quick:
        args.images, args.runs = 40, 1
    work = args.work

    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # before Ray starts: its workers import img2dataset
    sample = generate(SampleDataConfig(out=str(work / "sample"), videos=0, images=args.images, val_fraction=0.0))
    files = [Path(sample.path(s.file)) for s in sample.images]
    mb = sum(f.stat().st_size for f in files) / 1e6
    workers = os.cpu_count() or 1
    ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
    print(f"{len(files)} images, {mb:.1f} MB, {workers} Ray CPUs, {THREADS} threads per img2dataset task")

    n = len(files)
    result = {
        "benchmark": "ingest_cc3m",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine({"opencv": version("opencv-python-headless")}),
        "images": n,
        "source_mb": round(mb, 3),
        "samples_per_shard": SHARD,
        "img2dataset_settings": IMG2DATASET,
        "runs": args.runs,
        "warmup": not args.quick,
    }
    with StaticServer(Path(sample.root)) as server:  # as an image host would serve them
        tsv = sample.write_cc3m_tsv(str(work / "cc3m.tsv"), base_url=server.base_url, split=None)
        urls = [f"{server.base_url}/{s.file}" for s in sample.images]
        captions = [s.caption for s in sample.images]
        warmup = not args.quick
        result["pipeline"] = measure("vllama ingest cc3m", lambda: pipeline_run(tsv, n, work), args.runs, n, warmup)
        result["img2dataset_alone"] = measure(
            "img2dataset alone", lambda: img2dataset_run(urls, captions, work), args.runs, n, warmup
        )
    result["pipeline_over_img2dataset"] = round(
        result["pipeline"]["images_per_s"] / result["img2dataset_alone"]["images_per_s"], 3
    )
    ray.shutdown()
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ingest_cc3m.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("pipeline", "img2dataset_alone", "pipeline_over_img2dataset")}, indent=1))


if __name__ == "__main__":
    main()
