"""Ray job: the stage-2 instruction sets (cc_sbu_align, LLaVA-Instruct-150K, VideoChat-11K) -> conversation shards.

Submit to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/ingest_instruct.yaml \
        -- python jobs/ingest_instruct.py --config configs/ingest_instruct/full.yaml

or `vllama submit ingest_instruct --address http://127.0.0.1:8265 --config ...`. The job is
`vllama ingest instruct`: same arguments, same exit status; re-submitting skips complete shards.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from orchestration.cli import main as vllama


def main(argv: list[str] | None = None) -> int:
    return vllama(["ingest", "instruct", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
