"""Checkpoint interop with the released Video-LLaMA `.pth` files, and our own branch files.

Released files (`VL_LLaMA_2_7B_Finetuned.pth`, `AL_...`) are `torch.save`d dicts, either
`{'model': state_dict, 'optimizer', 'config', 'scaler', 'epoch'}` or the bare `state_dict`. The
state dict holds the trainable parameters of one branch plus buffers of the whole model that the
original's `strict=False` load silently skipped. Here every key is accounted for: used (mapped
onto our modules), ignored (a buffer we know and name), or an error that names it.

Our own format is a safetensors file keyed by our module names (`vl.video_Qformer.encoder...`)
with the size and branches in its metadata: no pickle, loadable by any safetensors reader.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from model.branches import BRANCHES, build_branches
from model.config import SIZES, ModelSize

FORMAT = "vllama-branches/1"

# Buffers a released file may hold that carry no trained state (why each is safe to drop):
IGNORABLE_BUFFERS = {
    # BERT `arange(512)` position ids of the image/video/audio Q-Formers; recomputed, never trained.
    "Q-Former position_ids": re.compile(r"^(\w+\.)*embeddings\.position_ids$"),
    # LLaMA rotary frequencies, a function of head size and rope_theta; transformers recomputes them.
    "LLaMA rotary_emb.inv_freq": re.compile(r"^llama_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
    # ImageBind's fixed text causal mask and fixed (non-learnable) logit scales.
    "ImageBind buffers": re.compile(
        r"^audio_encoder\.modality_(preprocessors\.text\.mask|postprocessors\.\w+\.1\.log_logit_scale)$"
    ),
}

# Our Blip2QFormerModel names -> the original BERT Q-Former names (applied after the branch prefix).
_RENAMES = (
    (re.compile(r"^(video|audio)_Qformer\.layernorm\."), r"\1_Qformer.bert.embeddings.LayerNorm."),
    (re.compile(r"^(video|audio)_Qformer\.encoder\."), r"\1_Qformer.bert.encoder."),
    (re.compile(r"\.(attention|crossattention)\.attention\."), r".\1.self."),
)
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: the message names the file and the keys."""


@dataclass
class ImportReport:
    source: str
    branches: tuple[str, ...]
    used: list[str] = field(default_factory=list)
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys
    other_entries: list[str] = field(default_factory=list)  # wrapper entries besides 'model' (optimizer, ...)

    def summary(self) -> str:
        lines = [f"{self.source}: branches {', '.join(self.branches)}; {len(self.used)} tensors used"]
        for reason, keys in self.ignored.items():
            lines.append(f"  ignored {len(keys)} known buffers ({reason}), e.g. {keys[0]}")
        if self.other_entries:
            lines.append(f"  not imported (training state): {', '.join(self.other_entries)}")
        return "\n".join(lines)


def reference_name(our_key: str) -> str:
    """`vl.video_Qformer.encoder.layer.0.attention.attention.query.weight` ->
    `video_Qformer.bert.encoder.layer.0.attention.self.query.weight`."""
    branch, _, name = our_key.partition(".")
    if branch not in BRANCHES:
        raise KeyError(f"{our_key}: not a branch parameter (expected a 'vl.' or 'al.' prefix)")
    for pattern, repl in _RENAMES:
        name = pattern.sub(repl, name)
    return name


@functools.lru_cache(maxsize=16)
def key_table(size: ModelSize, which: tuple[str, ...] = BRANCHES) -> dict[str, tuple[str, torch.Size]]:
    """reference name -> (our name, shape) for the branches at `size` (built on the meta device)."""
    with torch.device("meta"):
        modules = build_branches(size, which)
    return {reference_name(k): (k, v.shape) for k, v in modules.state_dict().items()}


def read_torch_file(data: bytes, source: str) -> dict:
    """`torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary code."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if needs is None:  # not a class reference: the bytes are not a pickle torch understands
            raise CheckpointError(f"{source}: not a readable torch checkpoint ({_last_line(e)})") from None
        raise CheckpointError(
            f"{source}: refused, the file needs pickle code execution to load (it references {needs.group(1)}, "
            "which torch.load(weights_only=True) does not run). If you trust it, re-save it in a trusted "
            "environment as torch.save({'model': state_dict}) with plain tensors, then convert that file."
        ) from None
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{source}: not a readable torch checkpoint ({_last_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict (state dict or {{'model': ...}}), got {type(obj).__name__}")
    return obj


def _last_line(err: Exception) -> str:
    """The specific line of torch's long multi-line load errors."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("Check the documentation")]
    return lines[-1] if lines else type(err).__name__


def unwrap(obj: Mapping[str, Any], source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside a released file, and the names of the other wrapper entries."""
    if isinstance(obj.get("model"), Mapping):
        state, others = dict(obj["model"]), sorted(k for k in obj if k != "model")
    else:
        state, others = dict(obj), []
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {_listing(bad)}")
    return state, others


def import_reference(
    obj: Mapping[str, Any], size: ModelSize, source: str = "<checkpoint>"
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Map a released Video-LLaMA checkpoint onto our branch names; every key is used, ignored
    as a known buffer, or named in the error (unknown, missing, wrong shape)."""
    state, others = unwrap(obj, source)
    table = key_table(size)
    branch_of = {ref: ours.partition(".")[0] for ref, (ours, _) in table.items()}
    present = tuple(b for b in BRANCHES if any(branch_of.get(k) == b for k in state))
    if not present:
        raise CheckpointError(
            f"{source}: no Video-LLaMA branch parameters (video_* / llama_proj / audio_*) found; "
            f"first keys: {_listing(sorted(state)[:5])}"
        )
    report = ImportReport(source=source, branches=present, other_entries=others)
    ours: dict[str, torch.Tensor] = {}
    unknown, wrong = [], []
    for key in sorted(state):
        value = state[key]
        if key in table:
            name, shape = table[key]
            if value.shape != shape:
                wrong.append(f"{key}: file {list(value.shape)}, expected {list(shape)}{_size_hint(key, value)}")
            ours[name] = value
            report.used.append(key)
        elif reason := _ignorable(key):
            report.ignored.setdefault(reason, []).append(key)
        else:
            unknown.append(key)
    missing = [k for k, b in branch_of.items() if b in present and k not in state]
    _raise_problems(source, size, unknown=unknown, missing=missing, wrong=wrong)
    return ours, report


def export_reference(state: Mapping[str, torch.Tensor], size: ModelSize, wrap: bool = True) -> dict:
    """Our branch state dict -> the released layout (`{'model': ...}` unless `wrap=False`)."""
    present = tuple(b for b in BRANCHES if any(k.startswith(f"{b}.") for k in state))
    if not present:
        raise CheckpointError("nothing to export: no 'vl.' or 'al.' tensors in the branch state")
    expected = {ours: shape for ours, shape in key_table(size, present).values()}
    unknown = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    wrong = [
        f"{k}: {list(v.shape)}, expected {list(expected[k])}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k]
    ]
    _raise_problems("<branch state>", size, unknown=unknown, missing=missing, wrong=wrong)
    out = {reference_name(k): v.detach().contiguous() for k, v in state.items()}
    return {"model": out} if wrap else out


def load_into(branches: nn.ModuleDict, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load imported tensors into the model's branches: each branch the state has is loaded whole
    (strict), the others are left as they are (a VL file into a VL+AL model). Returns the branches."""
    names = sorted({k.partition(".")[0] for k in state})
    absent = [n for n in names if n not in branches]
    if absent:
        raise CheckpointError(f"the checkpoint has branches {absent} that this model lacks (it has {list(branches)})")
    for name in names:
        branches[name].load_state_dict({k.partition(".")[2]: v for k, v in state.items() if k.startswith(f"{name}.")})
    return names


def save_branches(state: Mapping[str, torch.Tensor], size: ModelSize) -> bytes:
    """Our format: safetensors bytes with the size and branches in the metadata."""
    present = sorted({k.partition(".")[0] for k in state})
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    return safetensors_save(tensors, metadata={"format": FORMAT, "size": size.name, "branches": ",".join(present)})


def load_branches(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], ModelSize]:
    """Read our format back; the size named in its metadata must be a known size."""
    try:
        state = safetensors_load(data)
        # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except Exception as e:  # safetensors raises its own SafetensorError for a corrupt header
        raise CheckpointError(f"{source}: not a safetensors file ({e})") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or meta.get("size") not in SIZES:
        raise CheckpointError(
            f"{source}: metadata {meta} is not a vllama branch file (format {FORMAT!r}, size one of {list(SIZES)})"
        )
    return state, SIZES[meta["size"]]


def _ignorable(key: str) -> str | None:
    return next((reason for reason, pattern in IGNORABLE_BUFFERS.items() if pattern.match(key)), None)


def _size_hint(key: str, value: torch.Tensor) -> str:
    """Name the sizes whose table has this shape, e.g. a 13b file converted with --size 7b."""
    fits = [name for name, s in SIZES.items() if key in (t := key_table(s)) and t[key][1] == value.shape]
    return f" (matches size {', '.join(fits)})" if fits else ""


def _raise_problems(source: str, size: ModelSize, **problems: list[str]) -> None:
    parts = [f"{kind} keys ({len(keys)}): {_listing(keys)}" for kind, keys in problems.items() if keys]
    if parts:
        raise CheckpointError(f"{source} does not match size {size.name!r}:\n  " + "\n  ".join(parts))


def _listing(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more
