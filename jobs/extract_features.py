"""Ray job: media shards -> the fingerprinted feature store (frozen EVA ViT-g + Q-Former, ImageBind), Ray Data.

Submit to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/extract_features.yaml \
        -- python jobs/extract_features.py --config configs/features/7b.yaml root=s3://BUCKET/features

or `vllama submit extract_features --address http://127.0.0.1:8265 --config ...`. The job is
`vllama features extract`: same arguments, same exit status; the last line names the store
(ROOT/FINGERPRINT) that training's `data.store` reads. Re-submitting computes only new or changed shards.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from orchestration.cli import main as vllama


def main(argv: list[str] | None = None) -> int:
    return vllama(["features", "extract", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
