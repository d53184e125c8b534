"""Load the frozen encoders from the original checkpoint files, and write random ones in their layout.

Files and their key layouts (see shared/reference/videollama_checkpoint_keys.md):
- `eva_vit_g.pth` (LAVIS): a bare state dict, `blocks.*`, `patch_embed.*`, `cls_token`, `pos_embed`.
- `blip2_pretrained_flant5xxl.pth` (LAVIS): `{"model": state_dict}` with `Qformer.bert.*`, `query_tokens`,
  `ln_vision.*`, possibly `visual_encoder.*` (LAVIS loads it after the ViT, so those win), and text-side
  and LLM-side weights Video-LLaMA does not use.
- `imagebind_huge.pth`: a bare state dict of every ImageBind modality; audio and vision are used.

Each file is checked against a layout (original key -> shape) built from the config: a missing key,
an unknown key or a wrong shape fails naming it; keys Video-LLaMA does not use are ignored only when
a rule below names them. The layouts also define the random checkpoints tests and the demo load.
Files are read with `torch.load(weights_only=True)`: a file that needs pickle to run code is refused.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from model.image_encoder import FrozenImageEncoder, ImageEncoderConfig
from model.imagebind import ImageBindConfig, ImageBindEncoder

Shapes = dict[str, tuple[int, ...]]
IgnoreRules = list[tuple[str, str]]  # (regex on the original key, why it is unused)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded as-is; the message names the file and the key."""


@dataclass
class LoadReport:
    """What one file contributed: keys copied into the model, and keys skipped with the reason."""

    path: str
    used: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.ignored.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        skipped = "; ".join(f"{n} {reason}" for reason, n in reasons.items()) or "none"
        return f"{self.path}: used {len(self.used)} tensors; ignored {len(self.ignored)} ({skipped})"


# ---------------------------------------------------------------- reading files


def read_state_dict(path: str | Path, nested: str | None = None) -> dict[str, torch.Tensor]:
    """A dict of tensors from a local torch.save file, read without running pickled code.

    `nested`: the entry holding the state dict when the file wraps it (LAVIS: "model").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (pass a local path; copy s3:// checkpoints down first)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or others depending on the damage
        detail = str(err.__context__ or err).strip().splitlines()[0]
        needs = re.search(r"GLOBAL (\S+)", detail)
        if needs:
            raise CheckpointError(
                f"{path}: refused: unpickling it would run code ({needs.group(1)}); only plain tensor files are "
                "loaded (torch.load weights_only=True). Re-save its state dict with torch.save where you trust it."
            ) from None
        raise CheckpointError(f"{path}: not a torch.save file of tensors ({detail})") from None
    if nested is not None and isinstance(obj, dict) and isinstance(obj.get(nested), dict):
        obj = obj[nested]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]} (expected a state dict)")
    return obj


def check_layout(path: str, tensors: Mapping[str, torch.Tensor], layout: Shapes, ignore: IgnoreRules) -> LoadReport:
    """Compare a file's keys and shapes with the expected layout; fail naming the first problems."""
    report = LoadReport(path)
    unexpected = []
    for key in tensors:
        if key in layout:
            continue
        reason = next((why for pattern, why in ignore if re.fullmatch(pattern, key)), None)
        if reason is None:
            unexpected.append(key)
        else:
            report.ignored[key] = reason
    missing = [k for k in layout if k not in tensors]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} (expected {layout[k]})"
        for k in layout
        if k in tensors and tuple(tensors[k].shape) != layout[k]
    ]
    problems = [
        f"{problem}: {', '.join(keys[:5])}" + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        for problem, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path}: {'; '.join(problems)}. Is this the right file for this encoder size?")
    report.used = list(layout)
    return report


def _deeper_blocks(prefix: str, depth: int) -> str:
    """Regex for blocks at index >= depth, i.e. EVA-CLIP-g's 40th block when depth is 39."""
    return rf"{re.escape(prefix)}blocks\.(?!(?:{'|'.join(map(str, range(depth)))})\.)\d+\..+"


# ---------------------------------------------------------------- LAVIS layouts and names


def eva_vit_layout(cfg: ImageEncoderConfig, prefix: str = "") -> Shapes:
    """LAVIS eva_vit.py VisionTransformer keys: qkv without bias, q_bias and v_bias apart (k bias is zero)."""
    w, mlp, p = cfg.vit_width, cfg.vit_mlp, cfg.patch_size
    shapes: Shapes = {
        f"{prefix}cls_token": (1, 1, w),
        f"{prefix}pos_embed": (1, cfg.vit_tokens, w),
        f"{prefix}patch_embed.proj.weight": (w, 3, p, p),
        f"{prefix}patch_embed.proj.bias": (w,),
    }
    for i in range(cfg.vit_depth):
        b = f"{prefix}blocks.{i}."
        shapes.update({b + "norm1.weight": (w,), b + "norm1.bias": (w,), b + "attn.qkv.weight": (3 * w, w)})
        shapes.update({b + "attn.q_bias": (w,), b + "attn.v_bias": (w,), b + "attn.proj.weight": (w, w)})
        shapes.update({b + "attn.proj.bias": (w,), b + "norm2.weight": (w,), b + "norm2.bias": (w,)})
        shapes.update({b + "mlp.fc1.weight": (mlp, w), b + "mlp.fc1.bias": (mlp,)})
        shapes.update({b + "mlp.fc2.weight": (w, mlp), b + "mlp.fc2.bias": (w,)})
    return shapes


def blip2_qformer_layout(cfg: ImageEncoderConfig) -> Shapes:
    """What Video-LLaMA keeps of LAVIS's BLIP-2: query tokens, ln_vision, the Q-Former's query path."""
    h, mlp, enc = cfg.qformer_width, cfg.qformer_mlp, cfg.vit_width
    shapes: Shapes = {
        "query_tokens": (1, cfg.num_query_tokens, h),
        "ln_vision.weight": (enc,),
        "ln_vision.bias": (enc,),
    }
    shapes.update({"Qformer.bert.embeddings.LayerNorm.weight": (h,), "Qformer.bert.embeddings.LayerNorm.bias": (h,)})

    def attention(prefix: str, kv_width: int) -> None:
        for name, width in (("query", h), ("key", kv_width), ("value", kv_width)):
            shapes.update({f"{prefix}.self.{name}.weight": (h, width), f"{prefix}.self.{name}.bias": (h,)})
        shapes.update({f"{prefix}.output.dense.weight": (h, h), f"{prefix}.output.dense.bias": (h,)})
        shapes.update({f"{prefix}.output.LayerNorm.weight": (h,), f"{prefix}.output.LayerNorm.bias": (h,)})

    for i in range(cfg.qformer_depth):
        layer = f"Qformer.bert.encoder.layer.{i}"
        attention(f"{layer}.attention", h)
        if i in cfg.cross_attention_layers():
            attention(f"{layer}.crossattention", enc)
        shapes.update(
            {f"{layer}.intermediate_query.dense.weight": (mlp, h), f"{layer}.intermediate_query.dense.bias": (mlp,)}
        )
        shapes.update({f"{layer}.output_query.dense.weight": (h, mlp), f"{layer}.output_query.dense.bias": (h,)})
        shapes.update({f"{layer}.output_query.LayerNorm.weight": (h,), f"{layer}.output_query.LayerNorm.bias": (h,)})
    return shapes


def eva_vit_ignore(cfg: ImageEncoderConfig, prefix: str = "") -> IgnoreRules:
    p = re.escape(prefix)
    return [
        (_deeper_blocks(prefix, cfg.vit_depth), "EVA-CLIP-g blocks past those used (Video-LLaMA uses 39 of 40)"),
        (rf"{p}(norm|fc_norm|head)\..+", "EVA-CLIP final norm / projection head, unused (no final norm)"),
    ]


BLIP2_IGNORE: IgnoreRules = [
    (r"Qformer\.cls\..+", "Q-Former text head, deleted in Video-LLaMA"),
    (r"Qformer\.bert\.embeddings\.(word_embeddings\..+|position_embeddings\..+|position_ids)", "Q-Former text input"),
    (r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..+", "Q-Former text FFN, deleted in Video-LLaMA"),
    (r"(t5|opt|llm)_(proj|model)\..+", "BLIP-2's own LLM and projection"),
    (r"(vision_proj|text_proj|itm_head)\..+|temp", "BLIP-2 stage-1 contrastive/matching heads"),
]  # fmt: skip

_VIT_BLOCK_NAMES = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv"}
_VIT_BLOCK_NAMES.update({"attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"})
_VIT_EMBED_NAMES = {"cls_token": "class_embedding", "pos_embed": "position_embedding"}
_VIT_EMBED_NAMES.update(
    {"patch_embed.proj.weight": "patch_embedding.weight", "patch_embed.proj.bias": "patch_embedding.bias"}
)


def vit_to_module(vit: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAVIS ViT keys (no prefix) -> `FrozenImageEncoder.vision` keys; q/k/v biases fused as transformers does."""
    out = {}
    for key, value in vit.items():
        if key in _VIT_EMBED_NAMES:
            out[f"vision.embeddings.{_VIT_EMBED_NAMES[key]}"] = value
            continue
        index, rest = re.fullmatch(r"blocks\.(\d+)\.(.+)", key).groups()
        layer = f"vision.encoder.layers.{index}"
        if rest == "attn.q_bias":  # (3 * width,): q bias, a zero k bias, v bias
            out[f"{layer}.self_attn.qkv.bias"] = torch.cat(
                [value, torch.zeros_like(value), vit[f"blocks.{index}.attn.v_bias"]]
            )
        elif rest != "attn.v_bias":
            module, param = rest.rsplit(".", 1)
            out[f"{layer}.{_VIT_BLOCK_NAMES[module]}.{param}"] = value
    return out


def blip2_to_module(blip2: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAVIS Q-Former keys -> `FrozenImageEncoder` keys (the renames transformers' BLIP-2 conversion does)."""
    out = {}
    for key, value in blip2.items():
        if key.startswith("ln_vision."):
            key = key.replace("ln_vision.", "vision.post_layernorm.")
        elif key.startswith("Qformer.bert.embeddings.LayerNorm."):
            key = key.replace("Qformer.bert.embeddings.LayerNorm.", "qformer.layernorm.")
        elif key.startswith("Qformer.bert."):
            key = key.replace("Qformer.bert.", "qformer.").replace("attention.self.", "attention.attention.")
        out[key] = value
    return out


# ---------------------------------------------------------------- ImageBind layout


def imagebind_layout(cfg: ImageBindConfig) -> Shapes:
    """imagebind_huge.pth keys of the audio and vision encoders (ImageBind module names)."""
    vw, aw, out = cfg.vision_width, cfg.audio_width, cfg.out_dim
    t, p, a = cfg.video_frames, cfg.vision_patch, cfg.audio_patch
    pre = "modality_preprocessors"
    shapes: Shapes = {
        f"{pre}.vision.cls_token": (1, 1, vw),
        f"{pre}.vision.rgbt_stem.proj.1.weight": (vw, 3, t, p, p),
        f"{pre}.vision.pos_embedding_helper.pos_embed": (1, cfg.vision_tokens, vw),
        f"{pre}.audio.cls_token": (1, 1, aw),
        f"{pre}.audio.rgbt_stem.proj.weight": (aw, 1, a, a),
        f"{pre}.audio.rgbt_stem.norm_layer.weight": (aw,),
        f"{pre}.audio.rgbt_stem.norm_layer.bias": (aw,),
        f"{pre}.audio.pos_embedding_helper.pos_embed": (1, cfg.audio_tokens, aw),
        "modality_trunks.vision.pre_transformer_layer.0.weight": (vw,),
        "modality_trunks.vision.pre_transformer_layer.0.bias": (vw,),
    }
    for modality, w, depth in (("vision", vw, cfg.vision_depth), ("audio", aw, cfg.audio_depth)):
        hidden = cfg.mlp_ratio * w
        for i in range(depth):
            b = f"modality_trunks.{modality}.blocks.{i}."
            shapes.update({b + "attn.in_proj_weight": (3 * w, w), b + "attn.in_proj_bias": (3 * w,)})
            if modality == "audio":
                shapes.update({b + "attn.bias_k": (1, 1, w), b + "attn.bias_v": (1, 1, w)})
            shapes.update({b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,)})
            shapes.update({b + "norm_1.weight": (w,), b + "norm_1.bias": (w,), b + "norm_2.weight": (w,)})
            shapes.update({b + "norm_2.bias": (w,), b + "mlp.fc1.weight": (hidden, w), b + "mlp.fc1.bias": (hidden,)})
            shapes.update({b + "mlp.fc2.weight": (w, hidden), b + "mlp.fc2.bias": (w,)})
        head = f"modality_heads.{modality}."
        shapes.update({head + "0.weight": (w,), head + "0.bias": (w,), head + "2.weight": (out, w)})
    shapes["modality_postprocessors.audio.1.log_logit_scale"] = ()
    return shapes


IMAGEBIND_IGNORE: IgnoreRules = [
    (r"modality_\w+\.(text|depth|thermal|imu)\..+", "ImageBind modalities Video-LLaMA does not use"),
]


# ---------------------------------------------------------------- loading


def _assign(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Copy into the module; every parameter and buffer must be covered (a mapping bug fails here)."""
    result = module.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing, extra = result.missing_keys[:5], result.unexpected_keys[:5]
        raise RuntimeError(f"{what}: key mapping out of step with the module: missing {missing}, extra {extra}")


def load_image_encoder(
    module: FrozenImageEncoder, blip2_path: str | Path, eva_vit_path: str | Path | None = None
) -> list[LoadReport]:
    """Fill the ViT, ln_vision and Q-Former from LAVIS files, as Video-LLaMA does.

    The ViT comes from `eva_vit_path`, unless the BLIP-2 file holds `visual_encoder.*`, which LAVIS
    loads second and so wins; at least one of the two must hold all of it.
    """
    cfg = module.cfg
    blip2 = read_state_dict(blip2_path, nested="model")
    vit_layout = eva_vit_layout(cfg, "visual_encoder.")
    vit_in_blip2 = any(k in vit_layout for k in blip2)
    layout = blip2_qformer_layout(cfg) | (vit_layout if vit_in_blip2 else {})
    reports = [check_layout(str(blip2_path), blip2, layout, BLIP2_IGNORE + eva_vit_ignore(cfg, "visual_encoder."))]
    if vit_in_blip2:
        vit = {k.removeprefix("visual_encoder."): blip2[k] for k in vit_layout}
    elif eva_vit_path is None:
        raise CheckpointError(f"{blip2_path}: holds no visual_encoder.* weights; pass eva_vit_g.pth as well")
    if eva_vit_path is not None:
        eva = read_state_dict(eva_vit_path)
        eva_report = check_layout(str(eva_vit_path), eva, eva_vit_layout(cfg), eva_vit_ignore(cfg))
        if vit_in_blip2:  # LAVIS loads the BLIP-2 file second, so its ViT replaces this one
            eva_report.ignored |= dict.fromkeys(eva_report.used, f"superseded by visual_encoder.* in {blip2_path}")
            eva_report.used = []
        else:
            vit = {k: eva[k] for k in eva_report.used}
        reports.insert(0, eva_report)
    qformer = {k: blip2[k] for k in blip2_qformer_layout(cfg)}
    _assign(module, vit_to_module(vit) | blip2_to_module(qformer), "image encoder")
    return reports


def load_imagebind(module: ImageBindEncoder, path: str | Path) -> LoadReport:
    """Fill the audio and vision encoders from `imagebind_huge.pth` (keys are the module's own)."""
    tensors = read_state_dict(path)
    layout = imagebind_layout(module.cfg)
    report = check_layout(str(path), tensors, layout, IMAGEBIND_IGNORE)
    _assign(module, {k: tensors[k] for k in layout}, "ImageBind")
    return report


# ---------------------------------------------------------------- random checkpoints in the original layouts


# How random checkpoint weights are scaled:
#   trained  N(0, 0.02) everywhere, about the scale of the real (wide) encoders' weights;
#   fan_in   N(0, 1 / fan_in) for matrices, variance-preserving. At the tiny widths (48-64), 0.02 gives each
#            layer a gain of ~0.15, so attention is near uniform and the image barely reaches the output:
#            features then hold the background colour but not the shape's (linear probe on 240 sample
#            videos: shape colour 31 % held-out vs 92 % with fan_in, chance 12.5 %). Training tests that
#            must learn from tiny-encoder features use fan_in.
RANDOM_INITS = ("trained", "fan_in")


def _random_tensors(layout: Shapes, generator: torch.Generator, init: str = "trained") -> dict[str, torch.Tensor]:
    """Distinct values per tensor; norm gains near 1, other tensors scaled per `init` (see RANDOM_INITS)."""
    if init not in RANDOM_INITS:
        raise ValueError(f"unknown random init {init!r}; choose one of {RANDOM_INITS}")
    out = {}
    for key, shape in layout.items():
        if key.endswith("log_logit_scale"):
            out[key] = torch.tensor(math.log(20.0))  # released ImageBind: a fixed x20 on audio
        elif re.search(r"(norm\w*|LayerNorm|ln_vision|pre_transformer_layer\.0|heads\.\w+\.0)\.weight$", key):
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif init == "fan_in" and len(shape) >= 2:
            out[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        else:
            out[key] = 0.02 * torch.randn(shape, generator=generator)
    return out


def _unused_extras(kind: str, width: int) -> Shapes:
    """A few keys of the kinds the real files carry and Video-LLaMA ignores, so loading must skip them."""
    return {
        "blip2": {
            "Qformer.bert.embeddings.word_embeddings.weight": (30, width),
            "Qformer.bert.encoder.layer.0.intermediate.dense.weight": (4 * width, width),
            "Qformer.bert.encoder.layer.0.output.LayerNorm.weight": (width,),
            "Qformer.cls.predictions.bias": (30,),
            "t5_proj.weight": (16, width),
        },
        "imagebind": {
            "modality_trunks.text.blocks.0.attn.in_proj_weight": (3 * width, width),
            "modality_heads.depth.2.weight": (width, width),
            "modality_postprocessors.text.1.log_logit_scale": (),
        },
    }[kind]


def save_random_eva_vit(path: str | Path, cfg: ImageEncoderConfig, seed: int = 0, init: str = "trained") -> Path:
    """eva_vit_g.pth layout, one block deeper than used (EVA-CLIP-g has 40 blocks, Video-LLaMA uses 39)."""
    deeper = eva_vit_layout(dataclasses.replace(cfg, vit_depth=cfg.vit_depth + 1))
    return _save(path, _random_tensors(deeper, torch.Generator().manual_seed(seed), init))


def save_random_blip2(
    path: str | Path, cfg: ImageEncoderConfig, seed: int = 0, with_vit: bool = False, init: str = "trained"
) -> Path:
    """blip2_pretrained_flant5xxl.pth layout: {"model": ...} with unused text/LLM keys; the ViT if `with_vit`."""
    layout = blip2_qformer_layout(cfg) | _unused_extras("blip2", cfg.qformer_width)
    layout |= eva_vit_layout(cfg, "visual_encoder.") if with_vit else {}
    return _save(path, {"model": _random_tensors(layout, torch.Generator().manual_seed(seed), init)})


def save_random_imagebind(path: str | Path, cfg: ImageBindConfig, seed: int = 0, init: str = "trained") -> Path:
    """imagebind_huge.pth layout for the audio and vision encoders, plus unused other-modality keys."""
    layout = imagebind_layout(cfg) | _unused_extras("imagebind", cfg.audio_width)
    return _save(path, _random_tensors(layout, torch.Generator().manual_seed(seed), init))


def _save(path: str | Path, obj: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # a reader never sees half a file
    return path


def count_original_params(layout: Shapes, keep: Callable[[str], bool] = lambda key: True) -> int:
    """Number of values in a layout: the original module's parameter count (buffers excluded by `keep`)."""
    return sum(math.prod(shape) for key, shape in layout.items() if keep(key))
