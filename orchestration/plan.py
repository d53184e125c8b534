"""Capacity plan: the time and cost of every stage at full scale, from FLOPs and measured per-unit figures.

GPU work is FLOPs counted from the architecture (model/'s size tables) over peak x MFU. CPU work
(transcoding at ingestion, decoding frames for the encoders) is core-seconds per unit from the
benchmarks' output (benchmarks/results/*.json), measured on small generated media and scaled to
real media by pixel-frames. A GPU stage lasts the longer of its GPU time and the time its node
CPUs need to decode for it. Everything not measured is a stated assumption with a flag.

    plan = make_plan(PlanConfig(videos=2_500_000, images=595_000, gpus=64))
    plan.rows, plan.totals("cached"), plan.measured, plan.assumptions, plan.notes
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from model.config import SIZES, ModelSize
from orchestration.flops import Encoders, branch_flops, encoders, frozen_llm_train_flops
from orchestration.unit_costs import Measured, measure, scaled
from pipelines.config import config_dataclass

REPO = Path(__file__).resolve().parents[1]
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}
VIDEO_DATASETS = {"webvid", "videochat"}  # feature-store datasets of clips (configs/train); the rest are images
IMAGE_DATASETS = {"llava_cc3m", "cc_sbu_align", "llava_instruct"}
PATHS = ("cached", "on-the-fly")  # the two plans compared: through the feature store, or the original's loop


def parse_count(text: str | int) -> int:
    """'2.5M' -> 2500000, '595K' -> 595000; plain numbers, '1e6' and '12_000' too."""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmb]?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a count; write e.g. 2500000, 2.5M or 595K")
    value = float(m.group(1).replace("_", "").replace(",", "")) * _SUFFIX[m.group(2).lower()]
    if value != round(value):
        raise ValueError(f"{text!r} is not a whole number")
    return int(value)


def human(n: float) -> str:
    """2500000 -> '2.5M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_tflops: float  # dense bf16 tensor-core peak, NVIDIA datasheets (SXM)
    mfu: float  # assumed share of that peak a stage sustains
    hour_usd: float  # on-demand price per GPU-hour
    cpus_per_gpu: float  # the GPU node's vCPUs per GPU: they decode frames for the encoders
    hbm_tbps: float  # memory bandwidth, TB/s (datasheet): below peak/bandwidth tokens per step, weights bound a step
    price_source: str


# Prices: AWS EC2 On-Demand, us-east-1 Linux, after AWS's June 2025 P4/P5 price cut (the prices infra/README.md
# quotes); not re-checked from here: pass --gpu-hour-usd. MFU is an assumption, lower on H100 whose faster
# tensor cores leave more of a step to memory and launches; `benchmarks/features.py --gpu` measures it for
# the encoders; a training run's samples_per_s (MLflow) x FLOPs per sample gives training's.
GPUS: dict[str, Gpu] = {
    "a100": Gpu("A100", 312.0, 0.40, 21.96 / 8, 96 / 8, 1.555, "p4d.24xlarge $21.96/h / 8 GPUs"),  # A100-40GB
    "h100": Gpu("H100", 989.0, 0.35, 55.04 / 8, 192 / 8, 3.35, "p5.48xlarge $55.04/h / 8 GPUs"),
}
CPU_CORE_HOUR_USD = 1.36 / 32  # c6i.8xlarge On-Demand us-east-1 ($1.36/h, 32 vCPUs; infra/README.md)


@config_dataclass
class PlanConfig:
    """What to plan, on what hardware, and every assumption; each default says where it comes from."""

    videos: int = 2_500_000  # WebVid-2.5M (Video-LLaMA README)
    images: int = 595_000  # LLaVA-CC3M-Pretrain-595K
    instruct_videos: int = 11_000  # VideoChat-11K
    instruct_images: int = 84_400  # cc_sbu_align 3.4K + LLaVA-Instruct-150K's 81K COCO images (configs/ingest_instruct)
    gpus: int = 8
    gpu: Literal["a100", "h100"] = "a100"
    model: Literal["7b", "13b"] = "7b"
    views: int = 4  # augmented views kept per stage-1 sample (configs/features/7b.yaml); instruct data keeps 1
    frames: int = 8  # frames per clip (the original's n_frms)
    epochs: float | None = None  # passes over the stage-1 data; None: the recipe's steps x global batch
    peak_tflops: float | None = None  # None: the GPU's datasheet peak
    mfu: float | None = None  # None: the GPU's assumed MFU
    gpu_hour_usd: float | None = None  # None: the GPU's on-demand price
    cpus_per_gpu: float | None = None  # None: the GPU node's vCPUs per GPU
    cpu_cores: int = 256  # ingestion fleet in vCPUs: 8 x c6i.8xlarge
    cpu_core_hour_usd: float = CPU_CORE_HOUR_USD
    transfer_usd_per_gb: float = 0.045  # NAT gateway data processing (infra/README.md)
    download_gbps: float = 2.0  # aggregate from the sources: WebVid's one CDN host, 128 connections of ~16 Mbit/s
    clip_seconds: float = 18.0  # WebVid mean clip length (Bain et al., "Frozen in Time", 2021)
    clip_fps: float = 25.0
    clip_width: int = 596  # WebVid's 596x336 stock previews
    clip_height: int = 336
    clip_mb: float = 2.5  # ~1.1 Mbit/s H.264 for 18 s
    image_width: int = 500  # a typical CC3M / COCO JPEG
    image_height: int = 375
    image_mb: float = 0.05  # configs/ingest_llava595k/full.yaml: ~30-60 KB
    short_side: int = 224  # ingestion re-encodes clips to this short side (configs/ingest_webvid/full.yaml)
    audio_share: float = 0.0  # clips with sound; WebVid's stock previews are silent
    results: str = str(REPO / "benchmarks" / "results")
    train_configs: str = str(REPO / "configs" / "train")

    def __post_init__(self):
        counts = ("videos", "images", "instruct_videos", "instruct_images")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.videos + self.images == 0:
            raise ValueError("videos and images are both 0: nothing to plan")
        for name, value in vars(self).items():
            if isinstance(value, int | float) and name not in (*counts, "audio_share") and value <= 0:
                raise ValueError(f"{name}={value}: must be > 0")
        if not 0 <= self.audio_share <= 1 or (self.mfu or 0) > 1:
            raise ValueError(f"audio_share={self.audio_share}, mfu={self.mfu}: shares lie in [0, 1]")

    def hardware(self) -> Gpu:
        """The GPU's table entry with this config's overrides."""
        g = GPUS[self.gpu]
        source = g.price_source if self.gpu_hour_usd is None else "--gpu-hour-usd"
        return Gpu(
            g.name,
            self.peak_tflops or g.peak_tflops,
            self.mfu or g.mfu,
            self.gpu_hour_usd or g.hour_usd,
            self.cpus_per_gpu or g.cpus_per_gpu,
            g.hbm_tbps,
            source,
        )


# Stages: one Row each, in the order a full reproduction runs them.
@dataclass(frozen=True)
class Recipe:
    """One training stage as configs/train/<branch>_stage<n>_<size>.yaml sets it: the original's recipe."""

    name: str
    branch: str
    stage: int
    samples: int  # steps x global batch
    global_batch: int
    tokens: int  # sequence length: media tokens + the text cap, an upper bound (batches pad to their longest)
    video_share: float  # share of steps drawn from clip datasets; the rest are images


def load_recipe(cfg: PlanConfig, branch: str, stage: int) -> Recipe:
    from orchestration.config import load_config
    from orchestration.train_config import TrainConfig

    path = Path(cfg.train_configs) / f"{branch}_stage{stage}_{cfg.model}.yaml"
    tc = load_config(TrainConfig, path)
    unknown = [d.name for d in tc.data.train if d.name not in VIDEO_DATASETS | IMAGE_DATASETS]
    if unknown:
        raise ValueError(f"{path}: datasets {unknown} are neither clip sets {sorted(VIDEO_DATASETS)} nor image sets")
    batch = tc.scaling.workers * tc.scaling.micro_batch * tc.scaling.grad_accum
    q = SIZES[cfg.model].vl if branch == "vl" else SIZES[cfg.model].al
    # Stage 1: [BOS] + query tokens + caption cut at max_txt_len; stage 2: the conversation cut at max_len.
    tokens = 1 + q.num_query_tokens + tc.data.max_txt_len if stage == 1 else tc.data.max_len
    videos = sum(d.ratio for d in tc.data.train if d.name in VIDEO_DATASETS)
    return Recipe(
        name=f"{branch.upper()} stage {stage}",
        branch=branch,
        stage=stage,
        samples=tc.optim.iters_per_epoch * tc.optim.epochs * batch,
        global_batch=batch,
        tokens=tokens,
        video_share=videos / sum(d.ratio for d in tc.data.train),
    )


def stage_samples(cfg: PlanConfig, r: Recipe) -> int:
    """Samples a training stage sees: the recipe's, or --epochs passes over the stage-1 data."""
    return round(cfg.epochs * (cfg.videos + cfg.images)) if cfg.epochs and r.stage == 1 else r.samples


def train_sample_flops(size: ModelSize, enc: Encoders, r: Recipe, frames: int, on_the_fly: bool) -> float:
    """One training sample: frozen LLM fwd+bwd, the trainable branch fwd+bwd (3x its forward: dX and dW),
    and on the fly the frozen encoder's forward on every frame."""
    t = r.video_share * frames + (1 - r.video_share)  # mean frames per sample; an image is one frame
    q = size.vl if r.branch == "vl" else size.al
    keys = t * enc.vl_tokens if r.branch == "vl" else t  # VL: 32 tokens per frame; AL: one vector per frame
    flops = frozen_llm_train_flops(size.llm, r.tokens) + 3 * branch_flops(q, keys, size.llm.hidden)
    return flops + (t * (enc.vl_frame if r.branch == "vl" else enc.ibv_frame) if on_the_fly else 0.0)


@dataclass(frozen=True)
class Row:
    stage: str
    path: str  # "all" (both paths run it), "cached" (through the feature store) or "on-the-fly" (the original's loop)
    units: str
    flops: float  # 0 for CPU stages
    hours: float  # wall clock on the planned fleet
    gpu_hours: float
    cpu_core_hours: float  # vCPU-hours held by CPU stages (GPU nodes' CPUs are in the GPU price)
    cost_usd: float
    bound: str  # what sets the time


def ingest_row(cfg: PlanConfig, m: Measured, name: str, clips: int, images: int) -> Row:
    """Download at the assumed bandwidth while the CPU fleet transcodes; the slower of the two sets the time."""
    core_s = clips * m.clip_ingest_core_s + images * m.image_ingest_core_s
    gb = (clips * cfg.clip_mb + images * cfg.image_mb) / 1000
    cpu_h, net_h = core_s / cfg.cpu_cores / 3600, gb * 8 / cfg.download_gbps / 3600
    hours = max(cpu_h, net_h)
    cost = hours * cfg.cpu_cores * cfg.cpu_core_hour_usd + gb * cfg.transfer_usd_per_gb
    units = ", ".join(f"{human(n)} {kind}" for n, kind in ((clips, "clips"), (images, "images")) if n)
    bound = "download" if net_h > cpu_h else "CPU"
    return Row(name, "all", f"{units}, {gb / 1000:.3g} TB", 0.0, hours, 0.0, hours * cfg.cpu_cores, cost, bound)


def feature_row(
    cfg: PlanConfig, gpu: Gpu, m: Measured, enc: Encoders, name: str, clips: int, images: int, views: int
) -> Row:
    """Frozen encoders once per kept view of every frame; node CPUs decode each clip once for all its views."""
    frames = (clips * cfg.frames + images) * views
    flops = frames * (enc.vl_frame + enc.ibv_frame) + clips * cfg.audio_share * 8 * enc.iba_clip
    gpu_h = flops / (cfg.gpus * gpu.peak_tflops * 1e12 * gpu.mfu * m.efficiency) / 3600
    decode_h = clips * m.clip_decode_core_s / (cfg.gpus * gpu.cpus_per_gpu) / 3600
    hours = max(gpu_h, decode_h)
    bound = "decode CPUs" if decode_h > gpu_h else "GPU"
    units = f"{human(frames)} frames ({views} view{'s' * (views > 1)})"
    return Row(name, "cached", units, flops, hours, hours * cfg.gpus, 0.0, hours * cfg.gpus * gpu.hour_usd, bound)


def train_rows(cfg: PlanConfig, gpu: Gpu, m: Measured, size: ModelSize, enc: Encoders, r: Recipe) -> list[Row]:
    """The stage from cached features, and on the fly (decode + frozen encoders on every visit)."""
    samples = stage_samples(cfg, r)
    used = min(cfg.gpus, r.global_batch)  # data parallel: a GPU needs at least one sample per step
    rows = []
    for path in PATHS:
        fly = path == "on-the-fly"
        flops = samples * train_sample_flops(size, enc, r, cfg.frames, fly)
        gpu_h = flops / (used * gpu.peak_tflops * 1e12 * gpu.mfu) / 3600
        decode_h = samples * r.video_share * m.clip_decode_core_s / (used * gpu.cpus_per_gpu) / 3600 if fly else 0
        hours = max(gpu_h, decode_h)
        units = f"{human(samples)} samples x {r.tokens} tokens" + (f", {used} GPUs" if used < cfg.gpus else "")
        bound = "decode CPUs" if decode_h > gpu_h else "GPU"
        rows.append(
            Row(f"train {r.name}", path, units, flops, hours, hours * used, 0.0, hours * used * gpu.hour_usd, bound)
        )
    return rows


@dataclass(frozen=True)
class Plan:
    cfg: PlanConfig
    gpu: Gpu
    encoders: Encoders
    rows: tuple[Row, ...]
    measured: tuple[str, ...]  # per figure: file, machine and derivation, or the assumption replacing it
    assumptions: tuple[str, ...]
    notes: tuple[str, ...]

    def totals(self, path: str) -> Row:
        """The stages one path runs, summed: ingestion, then features + cached training, or on-the-fly training."""
        rows = [r for r in self.rows if r.path in ("all", path)]
        total = {f: sum(getattr(r, f) for r in rows) for f in ("flops", "hours", "gpu_hours", "cpu_core_hours")}
        cost = sum(r.cost_usd for r in rows)
        return Row(f"total, {path}", path, f"{len(rows)} stages in sequence", **total, cost_usd=cost, bound="")

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.cfg),
            "gpu": asdict(self.gpu),
            "encoder_gflop": {
                "vl_frame": self.encoders.vl_frame / 1e9,
                "ibv_frame": self.encoders.ibv_frame / 1e9,
                "iba_clip": self.encoders.iba_clip / 1e9,
            },
            "stages": [asdict(r) for r in self.rows],
            "totals": {p: asdict(self.totals(p)) for p in PATHS},
            "measured": list(self.measured),
            "assumptions": list(self.assumptions),
            "notes": list(self.notes),
        }


def make_plan(cfg: PlanConfig) -> Plan:
    gpu, size, m = cfg.hardware(), SIZES[cfg.model], measure(cfg)
    enc = encoders(size)
    recipes = [load_recipe(cfg, branch, stage) for branch, stage in (("vl", 1), ("vl", 2), ("al", 1), ("al", 2))]
    rows = [
        ingest_row(cfg, m, "ingest WebVid", cfg.videos, 0),
        ingest_row(cfg, m, "ingest images", 0, cfg.images),
        ingest_row(cfg, m, "ingest instruct", cfg.instruct_videos, cfg.instruct_images),
        feature_row(cfg, gpu, m, enc, "features stage-1 data", cfg.videos, cfg.images, cfg.views),
        feature_row(cfg, gpu, m, enc, "features instruct", cfg.instruct_videos, cfg.instruct_images, 1),
    ]
    for r in recipes:
        rows += train_rows(cfg, gpu, m, size, enc, r)
    plan = Plan(cfg, gpu, enc, tuple(rows), m.sources, assumptions(cfg, gpu, enc, m), notes=())
    return dataclasses.replace(plan, notes=tuple(notes(plan, recipes)))


def assumptions(cfg: PlanConfig, gpu: Gpu, enc: Encoders, m: Measured) -> tuple[str, ...]:
    out_w, out_h = scaled(cfg.clip_width, cfg.clip_height, cfg.short_side)
    return (
        f"GPU {gpu.name}: {gpu.peak_tflops:g} TFLOP/s dense bf16 peak (NVIDIA datasheet) at MFU {gpu.mfu:g} (assumed), "
        f"${gpu.hour_usd:.3f}/GPU-h ({gpu.price_source}; AWS On-Demand us-east-1 after the June 2025 P4/P5 price "
        f"cut), {gpu.cpus_per_gpu:g} node vCPUs per GPU decode frames",
        f"CPU: {cfg.cpu_cores} vCPUs ingest at ${cfg.cpu_core_hour_usd:.4f}/vCPU-h (c6i.8xlarge $1.36/h / 32); "
        f"downloads at {cfg.download_gbps:g} Gbit/s in all, ${cfg.transfer_usd_per_gb}/GB through the NAT gateway",
        f"clips: {cfg.clip_seconds:g} s (WebVid's mean), {cfg.clip_fps:g} fps, {cfg.clip_width}x{cfg.clip_height}, "
        f"{cfg.clip_mb:g} MB; ingested at {out_w}x{out_h}; {cfg.audio_share:.0%} with sound. Images "
        f"{cfg.image_width}x{cfg.image_height}, {cfg.image_mb:g} MB",
        f"frozen encoders per frame, counted from model/'s tables: EVA ViT-g/14 + Q-Former {enc.vl_frame / 1e9:.0f} "
        f"GFLOP, ImageBind-H vision {enc.ibv_frame / 1e9:.0f} GFLOP (audio {enc.iba_clip / 1e9:.0f} GFLOP per 2-s "
        f"clip); {cfg.frames} frames per clip, an image is 1 frame",
        "frozen LLM: forward + backward down to the soft tokens = ~4 x params x tokens (dX only, no dW; 6x would "
        "train the weights) + attention 3x its forward; trainable Q-Former + projection 3x their forward",
        "tokens per sample: stage 1 BOS + query tokens + max_txt_len, stage 2 max_len (configs/train): upper bounds",
        "training samples: the recipe's iters_per_epoch x epochs x global batch (configs/train/*.yaml"
        + (f"); --epochs {cfg.epochs:g}: passes over the stage-1 data" if cfg.epochs else ")"),
        "on-the-fly (the original's loop): every visit decodes the clip and runs the frozen encoder on its frames",
        f"a GPU stage lasts max(GPU time, decode time on its node CPUs); the feature job runs at "
        f"{m.efficiency:.2f} x the bare encoder (pipeline overhead); training uses min(GPUs, global batch) GPUs",
    )


def notes(plan: Plan, recipes: list[Recipe]) -> list[str]:
    """What the numbers imply: revisits per sample vs kept views, store size, when the store pays back."""
    cfg, enc, out = plan.cfg, plan.encoders, []
    visits = {r.name: stage_samples(cfg, r) * r.video_share / max(cfg.videos, 1) for r in recipes if r.stage == 1}
    most = max(1, math.ceil(max(visits.values())))
    if cfg.views > most:
        said = ", ".join(f"{v:.2f} ({k})" for k, v in visits.items())
        out.append(
            f"stage 1 visits each clip {said} times on average and each visit reads one kept view, so views "
            f"beyond {most} are rarely read: --views {most} cuts the stage-1 feature FLOPs by "
            f"{1 - most / cfg.views:.0%}"
        )
    per_frame = enc.vl_tokens * enc.vl_width * 2 + enc.ib_width * 2  # fp16 vl [32, 768] + ibv [1024]
    frames = (cfg.videos * cfg.frames + cfg.images) * cfg.views + cfg.instruct_videos * cfg.frames
    tb = (frames + cfg.instruct_images) * per_frame / 1e12
    out.append(
        f"feature store: {tb:.2f} TB (fp16 {enc.vl_tokens}x{enc.vl_width} + {enc.ib_width} per frame), "
        f"${tb * 1000 * 0.023:.0f}/month in S3 Standard ($0.023/GB-month)"
    )
    out += _payback(plan)
    for r in recipes:
        if r.global_batch < cfg.gpus:
            out.append(f"{r.name}: global batch {r.global_batch} < {cfg.gpus} GPUs, so {r.global_batch} GPUs train it")
        elif r.global_batch % cfg.gpus:
            out.append(f"{r.name}: global batch {r.global_batch} does not split evenly over {cfg.gpus} GPUs")
        tokens = r.global_batch / min(cfg.gpus, r.global_batch) * r.tokens  # per GPU per step
        ridge = plan.gpu.peak_tflops / plan.gpu.hbm_tbps  # FLOP per byte; bf16 weights: ~1 FLOP/byte per token
        if tokens < ridge:
            out.append(
                f"{r.name}: {tokens:.0f} tokens per GPU per step, under {plan.gpu.name}'s ~{ridge:.0f} at which "
                "reading the frozen weights stops bounding the step: expect less than the assumed MFU"
            )
    return out


def _payback(plan: Plan) -> list[str]:
    """When the one-off feature extraction is paid back by cheaper training sequences (four stages each)."""
    train = [r for r in plan.rows if r.stage.startswith("train")]
    cost = {p: sum(r.cost_usd for r in train if r.path == p) for p in PATHS}
    # On the fly with decoding fully hidden behind the GPUs: the decode estimate's lower bound.
    gpu_only = sum(r.flops for r in train if r.path == "on-the-fly") / (plan.gpu.peak_tflops * 1e12 * plan.gpu.mfu)
    gpu_only *= plan.gpu.hour_usd / 3600
    store = sum(r.cost_usd for r in plan.rows if r.stage.startswith("features"))

    def after(fly: float) -> str:
        return f"after {store / (fly - cost['cached']):.1f} sequences" if fly > cost["cached"] else "never"

    return [
        f"the feature store costs ${store:,.0f} once; a training sequence then costs ${cost['cached']:,.0f} instead of "
        f"${cost['on-the-fly']:,.0f} on the fly, so it pays back {after(cost['on-the-fly'])} (${gpu_only:,.0f} and "
        f"{after(gpu_only)} if decoding never held the GPUs back). 7B and 13B runs and re-runs read the same store"
    ]
