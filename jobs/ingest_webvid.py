"""Ray job: WebVid CSVs -> media shards (mp4 + cleaned caption + metadata), local or s3://.

Submit to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/ingest_webvid.yaml \
        -- python jobs/ingest_webvid.py --config configs/ingest_webvid/full.yaml out=s3://BUCKET/shards/webvid

or `vllama submit ingest_webvid --address http://127.0.0.1:8265 --config ...`. The job is
`vllama ingest webvid`: same arguments, same exit status; re-submitting skips complete shards.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from orchestration.cli import main as vllama


def main(argv: list[str] | None = None) -> int:
    return vllama(["ingest", "webvid", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
