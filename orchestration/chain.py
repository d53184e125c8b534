"""The chain: every stage of a reproduction in order, each skipping what is already complete.

A chain config lists stages, each a stage config (the same YAML `vllama ingest|features|train`
take) plus overrides. Five roots are set once at the top and spliced into the overrides as
${inputs} (CSVs, annotation files, raw media), ${models} (the LLM and the frozen encoders' weights),
${media} (media shards), ${features} (feature stores) and ${runs} (training runs), so one line
points a whole chain at other buckets. A stage's outputs become variables for the stages after it:
${store} is the feature store the latest `features` stage wrote (its fingerprinted folder), which is
how a training stage finds what it reads; ${weights} is the latest training stage's exported .pth,
which is how a stage 2 starts from its stage 1.

Every stage is idempotent, so re-running a chain redoes nothing that is complete: ingestion skips
complete shards, feature extraction skips feature shards that match their media shards, and a
training stage whose exported weights exist is skipped (an unfinished one resumes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from string import Template
from typing import Literal

from orchestration.config import ConfigError, config_class, load_config
from pipelines import storage
from pipelines.config import config_dataclass

log = logging.getLogger(__name__)

StageKind = Literal["ingest_webvid", "ingest_cc3m", "ingest_llava595k", "ingest_instruct", "features", "train"]


@config_dataclass
class ChainStage:
    stage: StageKind
    config: str  # the stage's YAML, e.g. configs/features/7b.yaml
    overrides: tuple[str, ...] = ()  # key=value; ${root} variables and earlier stages' outputs substituted


@config_dataclass
class ChainConfig:
    name: str  # shown in the output; the training stages name their own runs
    inputs: str = "demo-output/sample-data"  # the raw inputs: CSV/TSV, annotation JSON, media folders
    models: str = "demo-output/models"  # the LLM and the frozen encoders' checkpoints
    media: str = "demo-output/shards"  # root of the media shards (local or s3://)
    features: str = "demo-output/features"  # root of the feature stores
    runs: str = "demo-output/runs"  # where training runs live (checkpoints, exports, local MLflow)
    stages: tuple[ChainStage, ...] = ()

    def __post_init__(self):
        if not self.stages:
            raise ValueError("stages: empty; list the stages to run, e.g. {stage: features, config: ...}")
        trains = [i for i, s in enumerate(self.stages) if s.stage == "train"]
        features = [i for i, s in enumerate(self.stages) if s.stage == "features"]
        for i in trains:
            reads_store = any("${store}" in o for o in self.stages[i].overrides)
            if reads_store and not any(f < i for f in features):
                raise ValueError(f"stages[{i}] (train) reads ${{store}} but no features stage runs before it")

    @property
    def roots(self) -> dict[str, str]:
        names = ("inputs", "models", "media", "features", "runs")
        return {k: getattr(self, k).rstrip("/") for k in names}


@dataclass
class StageResult:
    stage: str
    config: str
    ok: bool  # False: some shards or samples failed; re-running the chain retries them
    skipped: bool  # True: nothing left to do
    seconds: float
    lines: list[str]  # what it produced, for the terminal
    outputs: dict = field(default_factory=dict)  # e.g. {"store": ...} for the next stages


def expand(overrides: tuple[str, ...], values: dict[str, str]) -> list[str]:
    """Substitute ${inputs} ${models} ${media} ${features} ${runs} and the outputs of earlier stages
    (${store}, ${weights}); an unknown or not yet set variable is an error."""
    out = []
    for item in overrides:
        try:
            out.append(Template(item).substitute(values))
        except KeyError as e:
            known = ", ".join(f"${{{k}}}" for k in values)
            raise ConfigError(f"override {item!r}: ${{{e.args[0]}}} is not set here (known: {known})") from None
    return out


# ---- stage runners: (config path, overrides) -> StageResult --------------------------------------
def _ingest_lines(summary, out: str) -> tuple[list[str], bool]:
    nothing = not summary.rows and not summary.shards_failed
    return summary.text().splitlines() + [f"  shards in {out}"], nothing


def _run_single_source(kind: str, source: str):
    """Runner for a source whose `run(cfg)` returns one RunSummary (WebVid, CC3M)."""

    def runner(path: str, overrides: list[str]) -> StageResult:
        import importlib

        cfg = load_config(config_class(kind), path, overrides)
        t0 = time.perf_counter()
        summary = importlib.import_module(f"pipelines.sources.{source}").run(cfg)
        lines, nothing = _ingest_lines(summary, cfg.out)
        return StageResult(kind, path, not summary.shards_failed, nothing, time.perf_counter() - t0, lines)

    return runner


INSTRUCT_SETS = ("cc_sbu_align", "llava_instruct", "videochat")  # `vllama ingest instruct`'s sets


def _run_media_sets(kind: str, sections: list[str] | None):
    def runner(path: str, overrides: list[str]) -> StageResult:
        from pipelines.sources import media_sets

        cfg = load_config(media_sets.MediaSetsIngestConfig, path, overrides)
        names = sections or [n for n in INSTRUCT_SETS if getattr(cfg, n) is not None]
        t0 = time.perf_counter()
        summaries = media_sets.run(cfg, names)
        lines, ok, nothing = [], True, True
        for name, summary in summaries.items():
            part, idle = _ingest_lines(summary, cfg.source(name).out)
            lines += [f"[{name}] {part[0]}", *part[1:]]
            ok, nothing = ok and not summary.shards_failed, nothing and idle
        return StageResult(kind, path, ok, nothing, time.perf_counter() - t0, lines)

    return runner


def run_features(path: str, overrides: list[str]) -> StageResult:
    from pipelines.features import extract

    cfg = load_config(extract.FeatureExtractConfig, path, overrides)
    summary = extract.run(cfg)
    ok = not summary.shards_failed and not summary.sources_missing
    nothing = not summary.shards_computed and not summary.shards_failed
    lines = summary.text().splitlines()
    if nothing:
        lines.append("  reused: the store already holds every media shard's features")
    return StageResult("features", path, ok, nothing, summary.seconds, lines, {"store": summary.store})


def run_train(path: str, overrides: list[str]) -> StageResult:
    from model.config import model_size
    from orchestration import checkpointing
    from orchestration.train import read_tracking, run
    from orchestration.train_config import TrainConfig

    cfg = load_config(TrainConfig, path, overrides)
    export = checkpointing.export_paths(cfg.run_dir, cfg.model.branch, model_size(cfg.model.size))
    if storage.exists(export["pth"], cfg.storage):
        tracking = read_tracking(cfg)
        lines = [f"{cfg.name}: already finished; weights {export['pth']}", *_mlflow_lines(tracking)]
        outputs = {"weights": export["pth"], **_mlflow_outputs(tracking)}
        return StageResult("train", path, True, True, 0.0, lines, outputs)
    t0 = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - t0
    m = result.metrics
    lines = [
        f"{cfg.name}: step {result.step} of {cfg.total_steps} in {seconds:.0f} s, "
        f"global batch {cfg.scaling.global_batch}",
        f"  loss {m.get('loss', float('nan')):.3f}" + (f", val loss {m['val_loss']:.3f}" if "val_loss" in m else "")
        + (f", {m['samples_per_s']:.1f} samples/s" if "samples_per_s" in m else ""),
        f"  weights: {result.export['pth']}",
        *_mlflow_lines(tracking := read_tracking(cfg)),
    ]  # fmt: skip
    outputs = {"weights": result.export["pth"], **_mlflow_outputs(tracking)}
    return StageResult("train", path, True, False, seconds, lines, outputs)


def _mlflow_outputs(tracking: dict) -> dict:
    return {"mlflow_uri": tracking["uri"], "mlflow_run": tracking["run_id"]} if tracking.get("run_id") else {}


def _mlflow_lines(tracking: dict) -> list[str]:
    if not tracking.get("run_id"):
        return []
    return [f"  MLflow run {tracking['run_id']} at {tracking.get('uri', '?')}"]


RUNNERS: dict[str, Callable[[str, list[str]], StageResult]] = {
    "ingest_webvid": _run_single_source("ingest_webvid", "webvid"),
    "ingest_cc3m": _run_single_source("ingest_cc3m", "cc3m"),
    "ingest_llava595k": _run_media_sets("ingest_llava595k", ["llava595k"]),
    "ingest_instruct": _run_media_sets("ingest_instruct", None),
    "features": run_features,
    "train": run_train,
}


OUTPUTS = ("store", "weights")  # variables that stages set for the stages after them


def check(cfg: ChainConfig) -> None:
    """Load every stage's config before the first stage starts, so a typo in stage 5 fails now, not
    after hours of ingestion (outputs of earlier stages stand in as placeholders)."""
    values = {**cfg.roots, **{k: f"{cfg.roots['runs']}/placeholder-{k}" for k in OUTPUTS}}
    for i, stage in enumerate(cfg.stages):
        try:
            load_config(config_class(stage.stage), stage.config, expand(stage.overrides, values))
        except ValueError as e:
            raise ConfigError(f"chain stage {i + 1} ({stage.stage}): {e}") from None


def run(cfg: ChainConfig, report: Callable[[int, StageResult], None] = lambda i, r: None) -> list[StageResult]:
    """Run the stages in order; `report` sees each result as it lands. A stage that raises stops the
    chain (what is done stays done); one that finishes with failed shards does not."""
    check(cfg)
    values = cfg.roots
    results = []
    for i, stage in enumerate(cfg.stages):
        overrides = expand(stage.overrides, values)
        log.info("chain %s: stage %d/%d %s (%s %s)", cfg.name, i + 1, len(cfg.stages), stage.stage, stage.config,
                 " ".join(overrides))  # fmt: skip
        result = RUNNERS[stage.stage](stage.config, overrides)
        values.update(result.outputs)
        results.append(result)
        report(i, result)
    return results
