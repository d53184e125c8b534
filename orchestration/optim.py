"""AdamW over the trainable branch parameters, with the original's weight-decay groups.

The original runner (Video-LLaMA `runners/runner_base.py`, from LAVIS) puts a trainable parameter in
the no-decay group when `p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n`, with `n` its name in
THEIR module tree. Our Q-Former names differ mechanically (`attention.attention` for
`attention.self`, ...), so the rule is applied to the released-checkpoint name of each parameter
(`model.checkpoint.reference_name`), which is the original's name: the groups are the same sets.
Note what that rule decays: the query tokens (1, 32, 768) and the position embeddings are >= 2-d,
so they are decayed, as in the original.
"""

from __future__ import annotations

import torch
from torch import nn

from model.checkpoint import reference_name


def decays(reference: str, param: torch.Tensor) -> bool:
    """The original's rule, on the original's parameter name."""
    return not (param.ndim < 2 or "bias" in reference or "ln" in reference or "bn" in reference)


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups from `VideoLLaMA.trainable_parameters()` (names `branches.vl....`)."""
    decay, no_decay = [], []
    for name, param in named:
        ref = reference_name(name.removeprefix("branches."))
        (decay if decays(ref, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """torch AdamW (the original's optimizer) for DeepSpeed to wrap.

    A client optimizer, not DeepSpeed's own, so the groups above hold exactly and nothing is
    JIT-compiled (DeepSpeed's FusedAdam/CPUAdam build a C++/CUDA op on first use); torch picks its
    multi-tensor kernels on CUDA by itself."""
    if not named:
        raise ValueError("no trainable parameters: the stage's branch is frozen or missing")
    return torch.optim.AdamW(param_groups(named, weight_decay), lr=lr, betas=betas)
