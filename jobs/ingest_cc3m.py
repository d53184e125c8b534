"""Ray job: Conceptual Captions TSVs -> image shards through img2dataset (jpg + cleaned caption + metadata).

Submit to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/ingest_cc3m.yaml \
        -- python jobs/ingest_cc3m.py --config configs/ingest_cc3m/full.yaml out=s3://BUCKET/shards/cc3m

or `vllama submit ingest_cc3m --address http://127.0.0.1:8265 --config ...`. The job is
`vllama ingest cc3m`: same arguments, same exit status; re-submitting skips complete shards.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from orchestration.cli import main as vllama


def main(argv: list[str] | None = None) -> int:
    return vllama(["ingest", "cc3m", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
