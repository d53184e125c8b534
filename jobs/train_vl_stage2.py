"""Ray job: VL stage 2: the VL branch instruction-tuned on cc_sbu_align, LLaVA-Instruct-150K, VideoChat-11K.

Ray Train + DeepSpeed over the instruct store (configs/features/instruct.yaml), tracked in MLflow. It
starts from VL stage 1's export (model.init). Submit to a running cluster from the repository root:

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_envs/train_vl_stage2.yaml \
        -- python jobs/train_vl_stage2.py --config configs/train/vl_stage2_7b.yaml \
        data.store=s3://FEATURES/features/FINGERPRINT storage_path=s3://CHECKPOINTS/runs

or `vllama submit train_vl_stage2 --address http://127.0.0.1:8265 --config ...`. Without --config the
job runs configs/train/vl_stage2_7b.yaml (the reference recipe on 8 GPUs); `key=value` overrides pass
through. The job is `vllama train`: same arguments, same exit status; re-submitting resumes the run from
its newest checkpoint.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs/_train.py, beside this file

import _train

DEFAULT_CONFIG = _train.default_config("vl_stage2")


def main(argv: list[str] | None = None) -> int:
    return _train.run(DEFAULT_CONFIG, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
