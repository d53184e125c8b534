"""Learning rate per optimizer step: linear warmup from `warmup_lr` to `init_lr`, then cosine to `min_lr`.

Two named variants, both reproduced value for value:

- `video_llama` (default): DAMO-NLP-SG/Video-LLaMA `video_llama/common/optims.py`
  `LinearWarmupCosineLRScheduler`, the code the reference runs used. With
  `total = epoch * iters_per_epoch + step`: while `total < warmup_steps` the lr rises linearly with the
  in-epoch step; afterwards it follows a cosine over ALL steps,
  `min + (init - min) * 0.5 * (1 + cos(pi * total / (epochs * iters_per_epoch)))`.
- `lavis`: salesforce/LAVIS `lavis/common/optims.py`, which Video-LLaMA forked and changed: warmup by
  step inside epoch 0 only (then `init_lr` for the rest of epoch 0), and from epoch 1 a cosine BY EPOCH,
  `min + (init - min) * 0.5 * (1 + cos(pi * epoch / epochs))`, constant within each epoch.

Both warm up with `min(init, warmup + (init - warmup) * step / max(warmup_steps, 1))`, as the originals.
A step's lr is set before that step's forward, as the original task loop calls `lr_scheduler.step`
before the forward; here a step is one optimizer step (the recipe accumulates no gradients, so an
original iteration and an optimizer step are the same thing).
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["video_llama", "lavis"]


def _warmup(step: int, warmup_steps: int, warmup_lr: float, init_lr: float) -> float:
    return min(init_lr, warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1))


def _cosine(position: float, length: float, init_lr: float, min_lr: float) -> float:
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * position / length)) + min_lr


def lr_at(
    step: int,
    *,
    init_lr: float,
    min_lr: float,
    warmup_lr: float,
    warmup_steps: int,
    iters_per_epoch: int,
    epochs: int,
    schedule: Schedule = "video_llama",
) -> float:
    """The lr of optimizer step `step` (0-based, counted over the whole run)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    epoch, in_epoch = divmod(step, iters_per_epoch)
    if schedule == "video_llama":
        if step < warmup_steps:
            return _warmup(in_epoch, warmup_steps, warmup_lr, init_lr)
        return _cosine(step, epochs * iters_per_epoch, init_lr, min_lr)
    if schedule == "lavis":
        if epoch == 0:
            return _warmup(in_epoch, warmup_steps, warmup_lr, init_lr)
        return _cosine(epoch, epochs, init_lr, min_lr)
    raise ValueError(f"unknown lr schedule {schedule!r}; choose 'video_llama' or 'lavis'")
