"""Ray job: AL stage 1: the audio Q-Former and projection pre-trained through ImageBind vision on captions.

Ray Train + DeepSpeed over the pre-training store (configs/features/7b.yaml), tracked in MLflow. Submit
to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/train_al_stage1.yaml \
        -- python jobs/train_al_stage1.py --config configs/train/al_stage1_7b.yaml \
        data.store=s3://FEATURES/features/FINGERPRINT storage_path=s3://CHECKPOINTS/runs

or `vllama submit train_al_stage1 --address http://127.0.0.1:8265 --config ...`. Without --config the
job runs configs/train/al_stage1_7b.yaml (the reference recipe on 8 GPUs); `key=value` overrides pass
through. The job is `vllama train`: same arguments, same exit status; re-submitting resumes the run from
its newest checkpoint.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs/_train.py, beside this file

import _train

DEFAULT_CONFIG = _train.default_config("al_stage1")


def main(argv: list[str] | None = None) -> int:
    return _train.run(DEFAULT_CONFIG, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
