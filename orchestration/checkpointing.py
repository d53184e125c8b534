"""What a run saves every N steps and restores on resume, and the final weights export.

A checkpoint directory (one per report; Ray Train merges every rank's files into it):

    deepspeed/...                 DeepSpeed's checkpoint, frozen parameters excluded: the branch weights
                                  (rank 0) and each rank's ZeRO optimizer partition
    train_state.json              step, world size, MLflow run id, the shard lists the run reads (rank 0)
    data/rank{r}.json             rank r's data position per dataset (pass, shard cursor, offset)

The export, written once at the end to `{run_dir}/export/`: the trained branch in the released
Video-LLaMA `.pth` layout (model/checkpoint.py) and in our safetensors branch format, both from the
optimizer's fp32 master weights (in bf16 runs the module holds bf16 copies).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.checkpoint import export_reference, save_branches
from model.config import ModelSize
from orchestration.data import Position, positions_from_json, positions_to_json
from pipelines import storage
from pipelines.storage import StorageConfig

log = logging.getLogger(__name__)

TAG = "deepspeed"
STATE_FILE = "train_state.json"
DATA_DIR = "data"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    world: int = 1
    mlflow_run_id: str | None = None
    shards: dict[str, list[int]] = field(default_factory=dict)  # train dataset -> complete shards at run start


def save(engine, directory: str, state: TrainState, positions: dict[str, Position], rank: int) -> None:
    """Every rank calls this (DeepSpeed's save is collective) into its own local `directory`."""
    engine.save_checkpoint(directory, tag=TAG, exclude_frozen_parameters=True)
    data = Path(directory, DATA_DIR)
    data.mkdir(parents=True, exist_ok=True)
    (data / f"rank{rank}.json").write_text(json.dumps(positions_to_json(positions)))
    if rank == 0:
        Path(directory, STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))


def restore(engine, directory: str, rank: int, world: int) -> tuple[TrainState, dict[str, Position]]:
    """Load weights + optimizer state into `engine`; this rank's data positions.

    With a different world size the saved positions do not map onto the new ranks, so each dataset
    starts its next pass (no sample of the interrupted pass is repeated)."""
    engine.load_checkpoint(
        directory, tag=TAG, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    state = TrainState(**json.loads(Path(directory, STATE_FILE).read_text()))
    saved = [positions_from_json(json.loads(p.read_text())) for p in sorted(Path(directory, DATA_DIR).glob("*.json"))]
    if state.world == world:
        return state, positions_from_json(json.loads(Path(directory, DATA_DIR, f"rank{rank}.json").read_text()))
    log.warning(
        "checkpoint saved by %d workers, resuming with %d: every dataset starts its next pass", state.world, world
    )
    names = {n for p in saved for n in p}
    return state, {n: Position(epoch=max(p[n].epoch for p in saved if n in p) + 1) for n in names}


def full_fp32_state(model) -> dict[str, torch.Tensor]:
    """The branch weights as the optimizer holds them (fp32 masters). Collective: every rank calls it."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, param in model.branches.named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        out[name] = (full if full is not None else param.detach()).float().cpu().clone()
    return out


def export_paths(run_dir: str, branch: str, size: ModelSize) -> dict[str, str]:
    stem = storage.join(run_dir, "export", f"videollama_{branch}_{size.name}")
    return {"pth": f"{stem}.pth", "safetensors": f"{stem}.safetensors"}


def export(state: dict[str, torch.Tensor], size: ModelSize, paths: dict[str, str], cfg: StorageConfig) -> None:
    """Write the released `.pth` layout and our safetensors file (atomic writes, local or s3://)."""
    buffer = io.BytesIO()
    torch.save(export_reference(state, size), buffer)
    storage.write_bytes(paths["pth"], buffer.getvalue(), cfg)
    storage.write_bytes(paths["safetensors"], save_branches(state, size), cfg)
    log.info("exported %d tensors to %s", len(state), paths["pth"])
