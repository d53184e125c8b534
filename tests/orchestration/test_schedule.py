"""The lr schedule reproduces Video-LLaMA's and LAVIS' LinearWarmupCosineLRScheduler value for value.

Expected values are worked out by hand from the originals' formulas (see orchestration/schedule.py).
"""

from __future__ import annotations

import math

import pytest

from orchestration.schedule import lr_at

# The recipe's VL stage 1 (train_configs/visionbranch_stage1_pretrain.yaml).
VL1 = dict(init_lr=1e-4, min_lr=8e-5, warmup_lr=1e-6, warmup_steps=2500, iters_per_epoch=2500, epochs=5)
# AL stage 2 (audiobranch_stage2_finetune.yaml): warmup shorter than an epoch.
AL2 = dict(init_lr=3e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=400, iters_per_epoch=1000, epochs=3)


@pytest.mark.parametrize("schedule", ["video_llama", "lavis"])
def test_warmup_is_linear_from_warmup_lr(schedule):
    assert lr_at(0, **VL1, schedule=schedule) == pytest.approx(1e-6, rel=1e-12)
    assert lr_at(1250, **VL1, schedule=schedule) == pytest.approx(5.05e-5, rel=1e-12)  # halfway
    assert lr_at(2499, **VL1, schedule=schedule) == pytest.approx(1e-6 + 99e-6 * 2499 / 2500, rel=1e-12)


def test_video_llama_cosine_runs_over_all_steps():
    # step 2500 of 12500: cos(pi / 5) = 0.80902 -> 8e-5 + 1e-5 * 1.80902
    assert lr_at(2500, **VL1) == pytest.approx(9.8090170e-5, rel=1e-7)
    assert lr_at(2501, **VL1) < lr_at(2500, **VL1)  # decays every step
    assert lr_at(7500, **VL1) == pytest.approx(8e-5 + 1e-5 * (1 + math.cos(math.pi * 0.6)), rel=1e-12)
    assert lr_at(12499, **VL1) == pytest.approx(8e-5, rel=1e-6)
    # warmup shorter than an epoch: the cosine starts at the step after warmup, not at an epoch boundary
    assert lr_at(399, **AL2) == pytest.approx(1e-6 + 29e-6 * 399 / 400, rel=1e-12)
    assert lr_at(500, **AL2) == pytest.approx(2.8660254e-5, rel=1e-7)  # cos(pi / 6)


def test_lavis_cosine_is_by_epoch_and_flat_within_it():
    assert lr_at(2500, **VL1, schedule="lavis") == pytest.approx(9.8090170e-5, rel=1e-7)  # epoch 1: cos(pi/5)
    assert lr_at(4999, **VL1, schedule="lavis") == lr_at(2500, **VL1, schedule="lavis")
    assert lr_at(5000, **VL1, schedule="lavis") == pytest.approx(9.3090170e-5, rel=1e-7)  # epoch 2: cos(2 pi/5)
    assert lr_at(12499, **VL1, schedule="lavis") == pytest.approx(8e-5 + 1e-5 * (1 + math.cos(math.pi * 0.8)))
    # after warmup, the rest of epoch 0 stays at init_lr
    assert lr_at(500, **AL2, schedule="lavis") == 3e-5
    assert lr_at(999, **AL2, schedule="lavis") == 3e-5


def test_bad_arguments():
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_at(-1, **VL1)
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lr_at(0, **VL1, schedule="linear")
