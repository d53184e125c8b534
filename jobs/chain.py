"""Ray job: a whole reproduction chain (ingest -> features -> train), each stage skipping what is complete.

Submit to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/chain.yaml \
        -- python jobs/chain.py --config configs/chain/full_7b.yaml \
        inputs=s3://MEDIA/sources media=s3://MEDIA/shards models=s3://WEIGHTS \
        features=s3://FEATURES/stores runs=s3://RUNS/train

or `vllama submit chain --address http://127.0.0.1:8265 --config configs/chain/full_7b.yaml ...`.
The job is `vllama chain`: same arguments, same exit status; re-submitting finishes what is left.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from orchestration.cli import main as vllama


def main(argv: list[str] | None = None) -> int:
    return vllama(["chain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
