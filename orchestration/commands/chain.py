"""`vllama chain --config configs/chain/<name>.yaml [key=value ...]`: every stage in order, skipping
what is complete."""

from __future__ import annotations

import argparse
import sys

from orchestration.commands import add_config_args

DESCRIPTION = """\
Run a reproduction end to end: the chain config lists stages (ingest_webvid, ingest_cc3m,
ingest_llava595k, ingest_instruct, features, train), each with its own stage config and overrides,
and runs them in order on one Ray (RAY_ADDRESS when set, e.g. inside `ray job submit`, else a local
one). Every stage is idempotent: complete media shards are skipped, a feature store that holds every
media shard is reused, a training run whose weights are exported is skipped and an unfinished one
resumes. So a failed or stopped chain is finished by running the same command again.

Roots set once at the top of the chain config are substituted into the stages' overrides:
${inputs}, ${models}, ${media}, ${features}, ${runs}; a stage's outputs are substituted into later
ones: ${store} (the latest feature store) and ${weights} (the latest exported .pth).

Exit status: 0 when every stage finished cleanly, 1 when a stage failed or left failed shards
(re-run to retry), 2 for bad config or input."""

EPILOG = """\
examples:
  vllama chain --config configs/chain/demo.yaml
  vllama chain --config configs/chain/full_7b.yaml inputs=s3://MEDIA/sources media=s3://MEDIA/shards \\
      models=s3://WEIGHTS features=s3://FEATURES/stores runs=s3://RUNS/train
as a Ray job: python jobs/chain.py --config ... (see jobs/chain.py), or vllama submit chain --address ..."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chain",
        help="run every stage in order (ingest -> features -> train), skipping what is complete",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "chain", "configs/chain/demo.yaml")
    p.set_defaults(func=run)


def print_stage(index: int, result) -> None:
    status = "reused, nothing to do" if result.skipped else ("done" if result.ok else "done with failures")
    print(f"\n[{index + 1}] {result.stage} ({result.config}): {status}, {result.seconds:.1f} s", flush=True)
    for line in result.lines:
        print(f"    {line}", flush=True)


def run(args: argparse.Namespace) -> int:
    from orchestration import chain
    from orchestration.config import load_config

    if args.config is None:
        print("vllama chain: --config is required, e.g. configs/chain/demo.yaml", file=sys.stderr)
        return 2
    cfg = load_config(chain.ChainConfig, args.config, args.overrides)
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    try:
        results = chain.run(cfg, report=print_stage)
    except (ValueError, FileNotFoundError) as e:
        print(f"vllama chain: {e}", file=sys.stderr)
        return 2
    failed = [r.stage for r in results if not r.ok]
    if failed:
        print(f"\nchain {cfg.name}: finished with failures in {', '.join(failed)}; re-run to retry", file=sys.stderr)
        return 1
    print(f"\nchain {cfg.name}: {len(results)} stages done")
    return 0
