"""Train one Video-LLaMA stage: a Ray Train (V2) TorchTrainer whose workers run DeepSpeed.

    run(cfg)                      the driver: checks the store, builds the TorchTrainer, returns the result
    train_loop_per_worker(config) one worker: model + engine, resume, step loop, checkpoints, export

Every step: the lr of the recipe's schedule, then grad_accum micro-batches (each from ONE dataset,
drawn per step alike on every rank), forward/backward/step through DeepSpeed. Every
`checkpoint.every_steps` and at the end, every rank saves into a local directory and
`ray.train.report` merges them into `{storage_path}/{name}/checkpoint_<step>`; a restarted worker
group or a re-run with the same name continues from the newest one (step, lr, data position, MLflow
run). Rank 0 logs to MLflow (orchestration/tracking.py) and, at the end, exports the weights.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass

import torch.distributed as dist

from model.config import model_size
from orchestration import checkpointing, steps
from orchestration import engine as engine_lib
from orchestration.checkpointing import TrainState
from orchestration.config import to_dict
from orchestration.tracking import Tracker, flat_params, resolve_uri
from orchestration.train_config import TrainConfig
from pipelines import storage
from pipelines.features import format as fmt

log = logging.getLogger(__name__)
TRACKING_FILE = "tracking.json"  # {run_dir}/tracking.json: the job's MLflow run, for the driver and early restarts


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    step: int
    checkpoint: str | None  # the newest checkpoint's path in storage
    export: dict[str, str]  # {"pth": ..., "safetensors": ...}
    mlflow_run_id: str | None
    metrics: dict


# ---- driver -----------------------------------------------------------------------------------
def run(cfg: TrainConfig) -> TrainResult:
    """Train `cfg`'s stage to the end (or resume it); raises if the job fails after its retries."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ds = engine_lib.resolve_deepspeed(cfg)
    check_store(cfg)
    warn_stale_build_lock()
    fmt.write_ref(cfg.data.store, cfg.name, {"run_dir": cfg.run_dir, "stage": cfg.stage}, cfg.storage)
    s = cfg.scaling
    log.info("%s: global batch %d = %d workers x %d micro-batch x %d accumulation; %d steps",
             cfg.name, s.global_batch, s.workers, s.micro_batch, s.grad_accum, cfg.total_steps)  # fmt: skip
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg, "deepspeed": ds},
        scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.name,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            **ray_storage(cfg),
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        mark_failed(cfg)
        raise
    size = model_size(cfg.model.size)
    return TrainResult(
        run_dir=cfg.run_dir,
        step=int(result.metrics.get("step", 0)),
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        export=checkpointing.export_paths(cfg.run_dir, cfg.model.branch, size),
        mlflow_run_id=read_tracking(cfg).get("run_id"),
        metrics=dict(result.metrics),
    )


def ray_storage(cfg: TrainConfig) -> dict:
    """RunConfig storage arguments: a local absolute path, or an S3 path on an arrow filesystem
    built from the run's StorageConfig (so any S3 endpoint works, not only AWS)."""
    if storage.is_remote(cfg.storage_path):
        path = cfg.storage_path.split("://", 1)[1]
        return {"storage_path": path, "storage_filesystem": storage.arrow_filesystem(cfg.storage_path, cfg.storage)}
    return {"storage_path": os.path.abspath(cfg.storage_path.removeprefix("file://"))}


def check_store(cfg: TrainConfig) -> None:
    """Fail before any worker starts if a dataset has no complete shard."""
    for d in (*cfg.data.train, *cfg.data.val):
        if not fmt.complete_shards(cfg.data.store, d.name, cfg.storage):
            raise ValueError(
                f"feature store {cfg.data.store} has no complete shards for dataset {d.name!r} "
                f"(it has {fmt.datasets(cfg.data.store, cfg.storage)}); run `vllama features extract` for it first"
            )


def warn_stale_build_lock(extension: str = "deepspeed_shm_comm", stale_s: float = 900) -> None:
    """DeepSpeed JIT-builds its CPU shared-memory op on first use, under torch's file lock. A build
    killed midway leaves the lock behind and every later worker waits on it forever, silently: say so."""
    import time

    from torch.utils.cpp_extension import _get_build_directory

    lock = os.path.join(_get_build_directory(extension, False), "lock")
    if os.path.exists(lock) and time.time() - os.path.getmtime(lock) > stale_s:
        log.warning(
            "%s is %.0f minutes old: a DeepSpeed op build was probably killed, and workers will wait on it "
            "forever; if no compiler is running (pgrep cc1plus), delete it",
            lock,
            (time.time() - os.path.getmtime(lock)) / 60,
        )


def read_tracking(cfg: TrainConfig) -> dict:
    uri = storage.join(cfg.run_dir, TRACKING_FILE)
    return json.loads(storage.read_text(uri, cfg.storage)) if storage.exists(uri, cfg.storage) else {}


def mark_failed(cfg: TrainConfig) -> None:
    """The job gave up: its MLflow run ends FAILED (workers that die cannot say so themselves)."""
    info = read_tracking(cfg)
    if info.get("run_id"):
        Tracker(info["uri"], info["run_id"]).finish("FAILED")


# ---- worker -----------------------------------------------------------------------------------
def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker; everything comes from `config` = {"train": TrainConfig, "deepspeed": dict}."""
    import ray.train

    cfg: TrainConfig = config["train"]
    ds: dict = config["deepspeed"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    steps.configure_logging(rank)
    model = engine_lib.build_model(cfg, ds)
    engine = engine_lib.init_engine(model, cfg, ds, lr=cfg.optim.warmup_lr)
    state, positions = resume(engine, ray.train.get_checkpoint(), rank, world)
    if not state.shards:
        state.shards = {d.name: fmt.complete_shards(cfg.data.store, d.name, cfg.storage) for d in cfg.data.train}
    tracker = open_tracking(cfg, ds, state) if rank == 0 else None
    if tracker is not None:  # one point per attempt: where each (re)start picked up
        tracker.log_metrics({"resume_step": state.step}, step=state.step)
    try:
        steps.run_steps(cfg, ds, engine, model, state, positions, rank, world, tracker, report=report)
        finish(cfg, model, tracker, rank)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")  # a restart by FailureConfig sets it RUNNING again
        raise


def resume(engine, checkpoint, rank: int, world: int) -> tuple[TrainState, dict]:
    if checkpoint is None:
        return TrainState(world=world), {}
    with checkpoint.as_directory() as directory:
        state, positions = checkpointing.restore(engine, directory, rank, world)
    log.info("rank %d resumed at step %d from %s", rank, state.step, checkpoint.path)
    state.world = world
    return state, positions


def report(cfg: TrainConfig, engine, state: TrainState, positions: dict, rank: int, metrics: dict, keys: list) -> None:
    """Every rank: save into a local directory and hand it to Ray Train (a barrier across ranks).

    The keys of the samples read since the previous checkpoint are written first: if the checkpoint
    never lands, the restarted run redoes those steps and rewrites the same files, byte for byte."""
    import ray.train

    if keys:
        uri = storage.join(cfg.run_dir, "consumed", f"rank{rank}", f"step{state.step:08d}.json")
        storage.write_text(uri, json.dumps(keys), cfg.storage)
    with tempfile.TemporaryDirectory(prefix="vllama-ckpt-") as directory:
        checkpointing.save(engine, directory, state, positions, rank)
        checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{state.step:08d}")


def open_tracking(cfg: TrainConfig, ds: dict, state: TrainState) -> Tracker:
    """Rank 0: continue the job's MLflow run (checkpoint, else tracking.json) or start one and log
    the resolved config, the DeepSpeed config and the feature-store manifest (lineage)."""
    uri = resolve_uri(cfg.tracking.uri, cfg.run_dir)
    run_id = state.mlflow_run_id or read_tracking(cfg).get("run_id")
    artifacts = None if storage.is_remote(cfg.run_dir) else storage.join(os.path.abspath(cfg.run_dir), "mlartifacts")
    tracker = Tracker.start(uri, cfg.tracking.experiment, cfg.name, run_id, artifacts and f"file://{artifacts}")
    if not tracker.enabled:
        return tracker
    state.mlflow_run_id = tracker.run_id
    storage.write_text(
        storage.join(cfg.run_dir, TRACKING_FILE), json.dumps({"uri": uri, "run_id": tracker.run_id}), cfg.storage
    )
    params = flat_params(to_dict(cfg)) | {
        "global_batch": str(cfg.scaling.global_batch),
        "total_steps": str(cfg.total_steps),
    }
    tracker.log_params(params)
    if run_id is None:  # a new run: the lineage artifacts, once
        import yaml

        tracker.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "train_config.yaml", "config")
        tracker.log_text(json.dumps(ds, indent=2), "deepspeed.json", "config")
        manifest = fmt.read_manifest(cfg.data.store, cfg.storage)
        tracker.log_text(json.dumps(manifest, indent=2), "feature_store_manifest.json", "lineage")
    return tracker


def finish(cfg: TrainConfig, model, tracker: Tracker | None, rank: int) -> None:
    """Export the fp32 weights (every rank takes part in gathering them), log and register them."""
    state = checkpointing.full_fp32_state(model)
    paths = checkpointing.export_paths(cfg.run_dir, cfg.model.branch, model.size)
    if rank == 0:
        checkpointing.export(state, model.size, paths, cfg.storage)
    if dist.is_initialized():
        dist.barrier()
    if tracker is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for uri in paths.values():
            local = os.path.join(tmp, uri.rsplit("/", 1)[-1])
            with open(local, "wb") as f:
                f.write(storage.read_bytes(uri, cfg.storage))
            tracker.log_artifact(local, "model")
    description = f"Video-LLaMA {cfg.model.branch} branch, stage {cfg.stage}, size {cfg.model.size} (run {cfg.name})"
    version = tracker.register(cfg.registered_model, "model", description)
    log.info("registered %s version %s", cfg.registered_model, version)
    tracker.finish("FINISHED")
