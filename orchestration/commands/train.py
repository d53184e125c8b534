"""`vllama train --config configs/train/<stage>_<size>.yaml [key=value ...]`: one training stage on Ray."""

from __future__ import annotations

import argparse
import json
import sys

from orchestration.commands import add_config_args

DESCRIPTION = """\
Train one Video-LLaMA stage on Ray Train with DeepSpeed: the stage's branch (VL or AL Q-Former and
projection) learns from precomputed features in the feature store while the LLM stays frozen.

A config names the stage (1: captions, 2: instructions), the branch, the model size and LLM, the
feature-store datasets and their mixing ratios, the lr schedule, the workers and batch sizes, and
where the run lives: {storage_path}/{name}/ holds Ray Train's checkpoints (trainable weights,
optimizer state, data position), export/ (the final weights as the released Video-LLaMA .pth and as
.safetensors) and, unless tracking.uri or MLFLOW_TRACKING_URI says otherwise, the MLflow store.

Re-running with the same name and storage_path RESUMES the run from its newest checkpoint: same
step, same lr, same data position, same MLflow run. A worker that dies mid-run is restarted from the
newest checkpoint up to checkpoint.max_failures times.

Ray: connects to the cluster in RAY_ADDRESS (e.g. inside `ray job submit`), else starts a local one."""

EPILOG = """\
examples:
  vllama train --config configs/train/vl_stage1_tiny.yaml
  vllama train --config configs/train/vl_stage1_7b.yaml data.store=s3://features/abc123 scaling.workers=16
  vllama train --config configs/train/vl_stage2_7b.yaml max_steps=20 name=vl2-smoke   # a smoke run
  vllama train --config configs/train/al_stage1_13b.yaml --dry-run                    # show the resolved config
stages, in order: vl_stage1 -> vl_stage2 ; al_stage1 -> al_stage2 (each stage 2 starts from its stage 1
export, model.init). sizes: tiny (CPU), 7b, 13b."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one Video-LLaMA stage (Ray Train + DeepSpeed over the feature store, tracked in MLflow)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, global batch and DeepSpeed config, then exit without training",
    )
    add_config_args(p, "train", "configs/train/vl_stage1_tiny.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestration.config import load_config, to_dict
    from orchestration.train_config import TrainConfig

    if args.config is None:
        print("vllama train: --config is required, e.g. configs/train/vl_stage1_tiny.yaml", file=sys.stderr)
        return 2
    cfg = load_config(TrainConfig, args.config, args.overrides)  # config errors before torch and DeepSpeed load
    from orchestration.engine import resolve_deepspeed

    try:
        ds = resolve_deepspeed(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"vllama train: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({"train": to_dict(cfg), "global_batch": cfg.scaling.global_batch, "deepspeed": ds}, indent=2))
        return 0
    import ray
    from ray.train import TrainingFailedError

    from orchestration.train import run as train

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS when set (a cluster, a submitted job), else a local Ray
    try:
        result = train(cfg)
    except ValueError as e:  # a store without the datasets, a bad checkpoint: said before any worker starts
        print(f"vllama train: {e}", file=sys.stderr)
        return 2
    except TrainingFailedError as e:  # out of retries; the MLflow run is marked FAILED
        print(f"vllama train: {cfg.name} failed: {e}\nre-run the same command to resume", file=sys.stderr)
        return 1
    print(f"{cfg.name}: finished at step {result.step} in {result.run_dir}")
    print(f"  weights: {result.export['pth']}")
    print(f"  checkpoint: {result.checkpoint}")
    print(f"  MLflow run: {result.mlflow_run_id}")
    return 0
