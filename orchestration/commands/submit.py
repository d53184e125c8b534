"""`vllama submit STAGE`: run a stage's Ray job on a cluster through Ray's JobSubmissionClient.

The entrypoint is `python jobs/STAGE.py --config ... KEY=VALUE ...`, the working dir is this
checkout, the runtime environment is `jobs/runtime_envs/STAGE.yaml`; the command prints the job
id, follows the logs, and exits non-zero if the job did not succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

DESCRIPTION = """\
Submit one stage (a script in jobs/) to a running Ray cluster and follow it to the end, as
`ray job submit --working-dir . --runtime-env jobs/runtime_envs/STAGE.yaml -- python jobs/STAGE.py ...`
would. The address is the cluster's dashboard (http://HOST:8265). Ray's token authentication
is honoured as Ray does it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
Exit status: 0 when the job SUCCEEDED, 1 when it FAILED or was STOPPED, 2 for bad arguments."""


def stages() -> list[str]:
    return sorted(p.stem for p in JOBS.glob("*.py") if not p.name.startswith("_"))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "submit",
        help="submit a stage's Ray job to a cluster, follow its logs, exit with its status",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", metavar="STAGE", choices=stages(), help=f"one of: {', '.join(stages())}")
    p.add_argument(
        "--address",
        required=True,
        metavar="URL",
        help="the cluster's dashboard address, e.g. http://127.0.0.1:8265 (a port-forward to a KubeRay head works)",
    )
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following the job")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up following after S seconds")
    p.add_argument("--config", metavar="PATH", help="the stage's YAML, relative to the checkout (configs/<kind>/...)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides passed to the job as they are")
    p.set_defaults(func=run)


def entrypoint(stage: str, config: str | None, overrides: list[str]) -> str:
    args = [f"jobs/{stage}.py", *(["--config", config] if config else []), *overrides]
    return "python " + " ".join(shlex.quote(a) for a in args)


def runtime_env(stage: str) -> dict:
    """The stage's runtime env file, with this checkout as the working dir."""
    path = JOBS / "runtime_envs" / f"{stage}.yaml"
    env = yaml.safe_load(path.read_text()) if path.exists() else {}
    return {**(env or {}), "working_dir": str(REPO)}


def run(args: argparse.Namespace) -> int:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(
        entrypoint=entrypoint(args.stage, args.config, args.overrides), runtime_env=runtime_env(args.stage)
    )
    print(f"submitted {args.stage} as job {job_id} to {args.address}", flush=True)
    if args.no_wait:
        return 0
    status = follow(client, job_id, args.timeout)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def follow(client, job_id: str, timeout: float | None) -> str:
    """Stream the job's logs to stdout until it ends; return its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout))
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        print(f"stopped following job {job_id} after {timeout} s; it goes on", file=sys.stderr)
    # The log stream ends when the job does; the status may lag by a moment.
    deadline = time.monotonic() + 30
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    return status
