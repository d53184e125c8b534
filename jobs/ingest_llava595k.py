"""Ray job: LLaVA-CC3M-Pretrain-595K (chat.json + images) -> image/caption shards for VL stage 1.

Submit to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/ingest_llava595k.yaml \
        -- python jobs/ingest_llava595k.py --config configs/ingest_llava595k/full.yaml out=s3://BUCKET/shards/llava595k

or `vllama submit ingest_llava595k --address http://127.0.0.1:8265 --config ...`. The job is
`vllama ingest llava595k`: same arguments, same exit status; re-submitting skips complete shards.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from orchestration.cli import main as vllama


def main(argv: list[str] | None = None) -> int:
    return vllama(["ingest", "llava595k", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
