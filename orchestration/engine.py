"""Build what one training worker runs: the DeepSpeed config, the model (frozen LLM + the stage's
branch, started from the configured checkpoints) and the DeepSpeed engine over the WHOLE model.

The engine wraps the whole VideoLLaMA, frozen LLM included, so ZeRO-3 can shard the LLM's weights
across ranks; the optimizer holds only the branch's parameters (the LLM has requires_grad=False).
On CPU, Ray Train has already set up a gloo process group and DeepSpeed reuses it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from model.checkpoint import CheckpointError, import_reference, load_branches, load_into, read_torch_file
from model.config import ModelSize, model_size
from model.llm import FrozenLlama
from model.video_llama import VideoLLaMA
from orchestration.optim import build_optimizer
from orchestration.train_config import TrainConfig
from pipelines import storage

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
AUTO = "auto"


def read_deepspeed(path: str, cfg: TrainConfig | None = None) -> dict:
    """The DeepSpeed JSON at `path` (URI, or a path relative to the working directory or the repo)."""
    local = Path(path)
    if "://" not in path and not local.is_absolute() and not local.exists() and (REPO / local).exists():
        local = REPO / local
    uri = str(local) if "://" not in path else path
    try:
        return json.loads(storage.read_text(uri, cfg.storage if cfg else None))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"deepspeed config {path} not found; see configs/deepspeed/ for the checked-in ones"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"deepspeed config {path}: not valid JSON ({e})") from None


def resolve_deepspeed(cfg: TrainConfig) -> dict:
    """The DeepSpeed config with its "auto" batch fields filled from `scaling`; set fields must agree."""
    ds = read_deepspeed(cfg.deepspeed, cfg)
    want = {
        "train_micro_batch_size_per_gpu": cfg.scaling.micro_batch,
        "gradient_accumulation_steps": cfg.scaling.grad_accum,
        "train_batch_size": cfg.scaling.global_batch,
    }
    for key, value in want.items():
        if ds.get(key, AUTO) == AUTO:
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(
                f'{cfg.deepspeed}: {key}={ds[key]} disagrees with the run config ({value}); set it to "auto"'
            )
    if ds.get("optimizer") or ds.get("scheduler"):
        raise ValueError(
            f"{cfg.deepspeed}: remove 'optimizer'/'scheduler'; the trainer builds AdamW with the original's "
            "weight-decay groups and sets the recipe's lr every step (train_config.optim)"
        )
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{cfg.deepspeed}: zero_optimization.stage must be 0-3, got {stage}")
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise ValueError(f"{cfg.deepspeed}: enable bf16 or fp16, not both")
    validate_deepspeed(ds, cfg.deepspeed)
    return ds


def validate_deepspeed(ds: dict, source: str) -> None:
    """DeepSpeed's own parser, on the driver, so a misspelt key fails before any worker starts.
    (train_batch_size is left out: DeepSpeed checks it against the world size, known only on the workers.)"""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig({k: v for k, v in ds.items() if k != "train_batch_size"})
    except Exception as e:  # pydantic ValidationError or DeepSpeed's assertions
        raise ValueError(f"{source}: DeepSpeed rejects it: {e}") from None


def compute_dtype(ds: dict) -> torch.dtype:
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def read_branch_file(uri: str, size: ModelSize, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Branch tensors from our .safetensors, our exported .pth or a released Video-LLaMA .pth."""
    data = storage.read_bytes(uri, cfg.storage)
    if uri.endswith(".safetensors"):
        state, file_size = load_branches(data, uri)
        if file_size.name != size.name:
            raise CheckpointError(f"{uri}: a size {file_size.name!r} branch file, this run is size {size.name!r}")
        return state
    state, report = import_reference(read_torch_file(data, uri), size, source=uri)
    log.info("%s", report.summary())
    return state


def load_init(model: VideoLLaMA, cfg: TrainConfig) -> None:
    """Start the branch from `model.init` files (in order) and `llama_proj_init`."""
    size = model.size
    for uri in cfg.model.init:
        state = read_branch_file(uri, size, cfg)
        ours = {k: v for k, v in state.items() if k.partition(".")[0] in model.branches}
        if not ours:
            held = sorted({k.partition(".")[0] for k in state})
            raise CheckpointError(f"{uri}: holds branches {held}, this stage trains {list(model.branches)}")
        log.info("initialised branches %s from %s", load_into(model.branches, ours), uri)
    if cfg.model.llama_proj_init:
        uri = cfg.model.llama_proj_init
        obj = read_torch_file(storage.read_bytes(uri, cfg.storage), uri)
        state = obj.get("model", obj)
        proj = model.branches["vl"].llama_proj
        try:
            proj.load_state_dict({"weight": state["llama_proj.weight"], "bias": state["llama_proj.bias"]})
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"{uri}: no usable llama_proj.weight/bias for {tuple(proj.weight.shape)} ({e})"
            ) from None
        log.info("initialised vl.llama_proj from %s (MiniGPT-4 projection)", uri)


def build_model(cfg: TrainConfig, ds: dict) -> VideoLLaMA:
    """Frozen LLM in the compute dtype + the stage's branch (same init on every rank)."""
    size = model_size(cfg.model.size)
    dtype = compute_dtype(ds)
    hf_ds = None
    if zero_stage(ds) == 3:
        # While this object lives, transformers loads the LLM straight into ZeRO-3 partitions,
        # so no rank ever holds the whole frozen LLM.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds)
    llm = FrozenLlama.from_pretrained(cfg.model.llm, dtype=dtype, storage_options=cfg.storage.s3_options())
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = VideoLLaMA(size, llm, branches=[cfg.model.branch])
    load_init(model, cfg)
    if cfg.model.gradient_checkpointing:
        llm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    object.__setattr__(model, "_hf_deepspeed_config", hf_ds)  # keep it alive with the model
    return model


def set_mode(engine, model: VideoLLaMA, cfg: TrainConfig, training: bool) -> None:
    """Branches train (dropout on) or evaluate; the frozen LLM stays in eval, except that HF only
    recomputes activations in train mode, so with gradient checkpointing it is put in train mode
    while training (LLaMA has no dropout, so its outputs are the same)."""
    engine.train(training)
    if training and cfg.model.gradient_checkpointing:
        model.llm.model.train()


def init_engine(model: VideoLLaMA, cfg: TrainConfig, ds: dict, lr: float):
    """deepspeed.initialize over the whole model with AdamW over the branch parameters only."""
    import deepspeed

    optimizer = build_optimizer(
        model.trainable_parameters(), lr=lr, weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas
    )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds, dist_init_required=False)
    return engine
