"""Training configs: the checked-in stages reproduce the recipe, bad values say what to change, and the
checked-in DeepSpeed configs resolve and pass DeepSpeed's own validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestration.config import ConfigError, load_config
from orchestration.engine import compute_dtype, resolve_deepspeed, zero_stage
from orchestration.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "configs" / "train"

# DESIGN.md "Training recipe" (the reference runs: 8 x A100-80G, global batch = 8 x per-GPU batch).
RECIPE = {
    # stage: (datasets {name: ratio}, batch per GPU, lr (warmup, peak, min), warmup steps, iters/epoch, epochs)
    "vl_stage1": ({"webvid": 100, "llava_cc3m": 24}, 32, (1e-6, 1e-4, 8e-5), 2500, 2500, 5),
    "al_stage1": ({"webvid": 100, "llava_cc3m": 24}, 32, (1e-6, 1e-4, 8e-5), 5000, 5000, 5),
    "vl_stage2": ({"cc_sbu_align": 1, "llava_instruct": 1, "videochat": 1}, 4, (1e-6, 3e-5, 1e-5), 1000, 1000, 3),
    "al_stage2": ({"cc_sbu_align": 1, "llava_instruct": 1, "videochat": 1}, 4, (1e-6, 3e-5, 1e-5), 400, 1000, 3),
}  # fmt: skip


@pytest.mark.parametrize("size", ["7b", "13b"])
@pytest.mark.parametrize("stage", sorted(RECIPE))
def test_full_scale_configs_are_the_recipe(stage, size):
    cfg = load_config(TrainConfig, TRAIN / f"{stage}_{size}.yaml")
    datasets, batch, lrs, warmup, iters, epochs = RECIPE[stage]
    assert {d.name: d.ratio for d in cfg.data.train} == datasets
    assert (cfg.scaling.workers, cfg.scaling.micro_batch, cfg.scaling.grad_accum) == (8, batch, 1)
    assert cfg.scaling.global_batch == 8 * batch
    o = cfg.optim
    assert (o.warmup_lr, o.init_lr, o.min_lr) == lrs
    assert (o.warmup_steps, o.iters_per_epoch, o.epochs) == (warmup, iters, epochs)
    assert (o.weight_decay, o.betas, o.schedule) == (0.05, (0.9, 0.999), "video_llama")
    assert cfg.model.size == size and cfg.model.branch == stage[:2] and cfg.stage == int(stage[-1])
    assert cfg.data.max_txt_len == {"vl_stage1": 32, "al_stage1": 32, "vl_stage2": 320, "al_stage2": 512}[stage]
    # each stage 2 starts from its own stage-1 export; stage 1 from scratch (VL: MiniGPT-4's projection)
    if stage.endswith("2"):
        assert cfg.model.init == (
            f"s3://vllama-runs/train/{stage[:2]}_stage1_{size}/export/videollama_{stage[:2]}_{size}.pth",
        )
    else:
        assert cfg.model.init == () and bool(cfg.model.llama_proj_init) == (stage == "vl_stage1")
    ds = resolve_deepspeed(cfg)
    assert compute_dtype(ds).is_floating_point and ds["bf16"]["enabled"] and zero_stage(ds) == 2


def test_every_stage_has_a_tiny_cpu_config_on_the_same_code_path():
    for stage in RECIPE:
        cfg = load_config(TrainConfig, TRAIN / f"{stage}_tiny.yaml")
        assert cfg.model.size == "tiny" and not cfg.scaling.use_gpu and cfg.scaling.workers == 2
        assert [d.name for d in cfg.data.train] == list(RECIPE[stage][0])


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_checked_in_deepspeed_configs_resolve_and_deepspeed_accepts_them(path):
    cfg = load_config(TrainConfig, TRAIN / "vl_stage1_tiny.yaml", [f"deepspeed={path}"])
    ds = resolve_deepspeed(cfg)
    batch = (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"])
    assert batch == (8, 1, 16)
    assert "optimizer" not in ds and "scheduler" not in ds
    expected = {
        "zero2_bf16.json": (2, "bfloat16"),
        "zero3_bf16.json": (3, "bfloat16"),
        "zero2_fp32_cpu.json": (2, "float32"),
    }
    assert (zero_stage(ds), str(compute_dtype(ds)).removeprefix("torch.")) == expected[path.name]


def _write(tmp_path: Path, ds: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return str(path)


@pytest.mark.parametrize(
    "ds, match",
    [
        ({"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu=4 disagrees with the run config"),
        ({"optimizer": {"type": "Adam"}}, "remove 'optimizer'"),
        ({"zero_optimization": {"stage": 2, "overlap_comms": True}}, "(?s)DeepSpeed rejects it.*overlap_comms"),
    ],
)
def test_deepspeed_config_mistakes_are_named(tmp_path, ds, match):
    cfg = load_config(TrainConfig, TRAIN / "vl_stage1_tiny.yaml", [f"deepspeed={_write(tmp_path, ds)}"])
    with pytest.raises(ValueError, match=match):
        resolve_deepspeed(cfg)


@pytest.mark.parametrize(
    "override, match",
    [
        ("stage=2", "stage 2: dataset webvid has text 'caption'; stage 2 uses prompted or conversation"),
        ("optim.warmup_steps=500", "warmup_steps=500 must be within the first epoch"),
        ("model.size=70b", "unknown model size '70b'"),
        ("model.branch=al", None),  # fine: AL stage 1 reads the same datasets
        ("eval.every_steps=5", None),
        ("max_steps=601", "max_steps must be in 1..600"),
        ("name=runs/a", "must be a plain folder name"),
        ("optim.min_lr=1", "min_lr <= init_lr"),
    ],
)
def test_bad_values_say_what_to_change(override, match):
    if match is None:
        load_config(TrainConfig, TRAIN / "vl_stage1_tiny.yaml", [override])
        return
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, TRAIN / "vl_stage1_tiny.yaml", [override])


def test_cross_field_checks():
    base = TRAIN / "vl_stage1_tiny.yaml"
    with pytest.raises(ConfigError, match="eval.every_steps is set but data.val names no held-out dataset"):
        load_config(TrainConfig, base, ["data.val=[]"])
    with pytest.raises(ConfigError, match="llama_proj_init initialises the VL projection"):
        load_config(TrainConfig, base, ["model.branch=al", "model.llama_proj_init=minigpt4.pth"])
    with pytest.raises(ConfigError, match="names a dataset twice"):
        load_config(TrainConfig, base, ["data.train=[{name: webvid}, {name: webvid, ratio: 2}]"])
