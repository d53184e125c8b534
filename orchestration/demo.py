"""`vllama demo`: the whole chain on this machine, from media that does not exist yet to a caption.

1. sample data: ffmpeg makes WebVid-style videos (a coloured shape moving over a background) and
   their CSVs, whose URLs point at a loopback HTTP server this process serves them from;
2. models: a tiny LLaMA trained on the training captions' text alone, then frozen (there are no
   downloadable weights here), and tiny random encoders in the released checkpoint layouts;
3. the chain (configs/chain/demo.yaml) on a local Ray: WebVid ingest -> feature store -> VL stage 1;
4. captions of held-out videos from the exported weights: one straight from its mp4 through the
   frozen encoders, and the colour each held-out video's caption names, against chance.

Everything lands under one folder (demo-output/); a second run reuses what is there.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHAIN_CONFIG = "configs/chain/demo.yaml"
SAMPLE_CONFIG = "configs/sample_data/demo.yaml"
LLM_STEPS = 200  # the tiny LLaMA's pre-training on caption text


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    port: int
    videos: int | None = None  # None: configs/sample_data/demo.yaml's count
    train_overrides: tuple[str, ...] = ()  # extra overrides for the training stage (e.g. optim.epochs=1)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the sample-data folder under /files/, as the generated CSVs' URLs expect."""

    def translate_path(self, path: str) -> str:
        return super().translate_path(path.removeprefix("/files"))

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve(root: Path, port: int) -> Iterator[str]:
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=str(root)))
    except OSError as e:
        raise SystemExit(f"vllama demo: cannot serve sample data on 127.0.0.1:{port} ({e}); pass --port N") from None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/files"
    finally:
        server.shutdown()
        server.server_close()


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def make_sample_data(cfg: DemoConfig, base_url: str):
    from orchestration.config import load_config
    from pipelines.sample_data import SampleDataConfig, generate

    overrides = [f"out={cfg.out / 'sample-data'}", f"base_url={base_url}"]
    overrides += [f"videos={cfg.videos}"] if cfg.videos else []
    data = generate(load_config(SampleDataConfig, SAMPLE_CONFIG, overrides))
    data.write_webvid_csv(data.path("webvid/train/results_train.csv"), split="train")
    data.write_webvid_csv(data.path("webvid/val/results_val.csv"), split="val")
    return data


def language_texts(videos) -> list[str]:
    """What the tiny LLaMA reads before it is frozen: each training caption alone and twice in a row
    (so it learns to continue from context, as a real LLM can). Captions only: the demo's stage is
    captioning, and ~30-token texts keep this to seconds."""
    captions = [f"{v.caption}\n" for v in videos]
    return captions + [c + c for c in captions]


def make_models(models: Path, data) -> list[str]:
    """The frozen tiny LLaMA and the encoder checkpoints, each made once."""
    from model.frozen_encoders import EncoderCheckpoints, save_random_checkpoints
    from model.tiny import pretrain_tiny_llama

    lines = []
    llm = models / "tiny-llama"
    if (llm / "config.json").exists():
        lines.append(f"tiny LLaMA: reused {llm}")
    else:
        t0 = time.perf_counter()
        _, losses = pretrain_tiny_llama(llm, language_texts(data.select("video", "train")), steps=LLM_STEPS)
        lines.append(
            f"tiny LLaMA: trained on the training captions' text, loss {losses[0]:.2f} -> {losses[-1]:.2f} "
            f"in {LLM_STEPS} steps ({time.perf_counter() - t0:.0f} s), frozen from here on: {llm}"
        )
    encoders = models / "encoders-tiny"
    if all(Path(p).exists() for p in vars(EncoderCheckpoints.in_directory(encoders)).values()):
        lines.append(f"encoders: reused {encoders}")
    else:
        save_random_checkpoints(encoders, "tiny", "tiny", init="fan_in")
        lines.append(f"encoders: tiny EVA ViT + Q-Former + ImageBind, random (fan-in), released layouts: {encoders}")
    return lines


def named_colour(text: str, colours) -> str | None:
    return next((w for w in re.findall(r"[a-z]+", text.lower()) if w in colours), None)


def captions(weights: str, llm: str, encoders: str, store: str, data) -> list[str]:
    """One held-out video captioned from its mp4; then every held-out video's caption from the store."""
    import torch

    from orchestration import generate
    from pipelines.features import format as fmt
    from pipelines.sample_media import PALETTE

    torch.manual_seed(0)
    model = generate.load_model(weights, llm, "tiny", encoders=encoders)
    held_out = data.select("video", "val")
    first = held_out[0]
    media = generate.media_from_file(data.path(first.file), "video")
    with torch.no_grad():
        vl, _ = model.encoders.encode_frames(media.video.to(model.llm.model.device))  # (T, 32, H)
    said = generate.caption(model, vl).text
    lines = [f"held-out video {first.file}", f"  generated: {said!r}", f"  true:      {first.caption!r}"]
    truth = {v.id: v.colour for v in held_out}
    hits = total = 0
    for index in fmt.complete_shards(store, "webvid_val"):
        for sample in fmt.iter_shard(fmt.shard_uri(store, "webvid_val", index)):
            if sample.key in truth:
                reply = generate.caption(model, generate.media_from_sample(sample).vl_features).text
                hits += named_colour(reply, PALETTE) == truth[sample.key]
                total += 1
    if total:
        lines.append(
            f"colour named right in {hits}/{total} held-out captions ({hits / total:.0%}); "
            f"chance {1 / len(PALETTE):.1%}"
        )
    return lines


def run(cfg: DemoConfig) -> int:
    import ray

    from orchestration import chain
    from orchestration.commands.chain import print_stage
    from orchestration.config import load_config

    started = time.perf_counter()
    out = cfg.out.resolve()
    roots = {k: str(out / v) for k, v in (("inputs", "sample-data"), ("models", "models"), ("media", "shards"),
                                          ("features", "features"), ("runs", "runs"))}  # fmt: skip
    with serve(out / "sample-data" if (out / "sample-data").exists() else _mkdir(out / "sample-data"), cfg.port) as url:
        t0 = step(f"sample data, served at {url}")
        data = make_sample_data(cfg, url)
        train, val = data.select("video", "train"), data.select("video", "val")
        print(f"    {len(train)} training and {len(val)} held-out videos in {roots['inputs']} "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip

        t0 = step("models")
        for line in make_models(Path(roots["models"]), data):
            print(f"    {line}")

        step(f"chain {CHAIN_CONFIG} on a local Ray")
        overrides = [f"{k}={v}" for k, v in roots.items()]
        chain_cfg = load_config(chain.ChainConfig, CHAIN_CONFIG, overrides)
        if cfg.train_overrides:
            stages = tuple(
                dataclasses.replace(s, overrides=(*s.overrides, *cfg.train_overrides)) if s.stage == "train" else s
                for s in chain_cfg.stages
            )
            chain_cfg = dataclasses.replace(chain_cfg, stages=stages)
        if not ray.is_initialized():
            ray.init(log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
        quiet_ray_data()
        results = chain.run(chain_cfg, report=print_stage)
    failed = [r.stage for r in results if not r.ok]
    if failed:
        print(f"\nvllama demo: {', '.join(failed)} left failures; re-run `make demo` to retry")
        return 1

    step("captions from the trained weights")
    store = next(r.outputs["store"] for r in results if r.stage == "features")
    trained = next(r for r in results if r.stage == "train")
    weights = trained.outputs["weights"]
    encoders = str(Path(roots["models"]) / "encoders-tiny")
    for line in captions(weights, str(Path(roots["models"]) / "tiny-llama"), encoders, store, data):
        print(f"    {line}")

    print(f"\n== done in {time.perf_counter() - started:.0f} s")
    if trained.outputs.get("mlflow_uri"):
        print(f"    MLflow run {trained.outputs['mlflow_run']}: open its UI with")
        print(
            f"      .venv/bin/mlflow ui --backend-store-uri {trained.outputs['mlflow_uri']}   (then http://127.0.0.1:5000)"
        )
    print("    run `make demo` again: every stage above reuses what it made (shards, feature store, run)")
    return 0


def quiet_ray_data() -> None:
    """The stages print their own summaries; Ray Data's progress lines would bury them."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
