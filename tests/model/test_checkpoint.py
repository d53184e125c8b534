"""Import/export of released Video-LLaMA checkpoints, against the hand-transcribed reference layout."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from harness.videollama_reference import al_keys, ignorable_buffers, random_state, vl_keys

from model.branches import build_branches
from model.checkpoint import (
    CheckpointError,
    export_reference,
    import_reference,
    load_branches,
    load_into,
    read_torch_file,
    save_branches,
)
from model.config import SIZES

SIZE_7B = SIZES["7b"]


@pytest.fixture(scope="module")
def released():
    """Real-size 7B VL and AL state dicts in the original key layout, random values, plus buffers."""
    return {
        "vl": random_state(vl_keys(4096), seed=1) | ignorable_buffers("vl"),
        "al": random_state(al_keys(4096), seed=2) | ignorable_buffers("al"),
    }


def to_file(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_bit_identical(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].numpy().tobytes() == value.numpy().tobytes(), key


@pytest.mark.parametrize("branch", ["vl", "al"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["model-wrapper", "bare"])
def test_released_file_imports_and_reexports_bit_identically(released, branch, wrapped):
    state = released[branch]
    trained = {k: v for k, v in state.items() if k in (vl_keys(4096) if branch == "vl" else al_keys(4096))}
    obj = (
        {"model": state, "optimizer": {"state": {}}, "config": {"run": {"lr": 1e-4}}, "epoch": 4} if wrapped else state
    )
    source = f"{branch}.pth"

    ours, report = import_reference(read_torch_file(to_file(obj), source), SIZE_7B, source)
    assert report.branches == (branch,)
    assert sorted(report.used) == sorted(trained)
    ignored = sorted(k for keys in report.ignored.values() for k in keys)
    assert ignored == sorted(set(state) - set(trained))
    assert report.other_entries == (["config", "epoch", "optimizer"] if wrapped else [])

    # Into live modules (strict: every parameter of the branch set), then back out of them.
    modules = build_branches(SIZE_7B, (branch,))
    modules.load_state_dict(ours, strict=True)
    exported = export_reference(modules.state_dict(), SIZE_7B)
    assert list(exported) == ["model"]
    assert_bit_identical(torch.load(io.BytesIO(to_file(exported)), weights_only=True)["model"], trained)

    # Through our safetensors format too.
    back, size = load_branches(save_branches(ours, SIZE_7B), "ours.safetensors")
    assert size is SIZE_7B
    assert_bit_identical(export_reference(back, SIZE_7B, wrap=False), trained)


def test_one_branch_file_loads_into_a_two_branch_model(released):
    ours, _ = import_reference(released["al"], SIZE_7B)
    with torch.device("meta"):
        model = build_branches(SIZE_7B)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.fill_(0.5)  # to_empty leaves arbitrary memory; give it known values
    vl_before = {k: v.clone() for k, v in model["vl"].state_dict().items()}
    assert load_into(model, ours) == ["al"]
    assert torch.equal(model["al"].audio_llama_proj.weight, released["al"]["audio_llama_proj.weight"])
    assert all(torch.equal(v, vl_before[k]) for k, v in model["vl"].state_dict().items())  # untouched
    with pytest.raises(CheckpointError, match=r"branches \['al'\] that this model lacks"):
        load_into(build_branches(SIZES["tiny"], ("vl",)), {"al.audio_query_tokens": torch.zeros(1)})


def test_both_branches_in_one_file(released):
    both = released["vl"] | released["al"]
    ours, report = import_reference(both, SIZE_7B)
    assert report.branches == ("vl", "al")
    assert len(ours) == len(vl_keys(4096)) + len(al_keys(4096))


def _import_error(state: dict) -> str:
    with pytest.raises(CheckpointError) as err:
        import_reference({"model": state}, SIZE_7B, "bad.pth")
    return str(err.value)


def test_wrong_shape_is_named(released):
    state = dict(released["vl"])
    state["video_Qformer.bert.encoder.layer.1.crossattention.self.key.weight"] = torch.zeros(768, 1024)
    message = _import_error(state)
    assert "bad.pth does not match size '7b'" in message
    assert (
        "video_Qformer.bert.encoder.layer.1.crossattention.self.key.weight: file [768, 1024], expected [768, 768]"
        in message
    )


def test_13b_file_read_as_7b_says_which_size_fits():
    state = random_state(vl_keys(5120), seed=3)
    message = _import_error(state)
    assert "llama_proj.weight: file [5120, 768], expected [4096, 768] (matches size 13b)" in message
    ours, _ = import_reference(state, SIZES["13b"])
    assert ours["vl.llama_proj.weight"].shape == (5120, 768)


def test_unknown_key_is_named(released):
    state = dict(released["vl"])
    state["video_Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(3072, 768)  # text FFN
    state["video_Qformer.cls.predictions.bias"] = torch.zeros(30522)
    message = _import_error(state)
    assert (
        "unknown keys (2): video_Qformer.bert.encoder.layer.0.intermediate.dense.weight, "
        "video_Qformer.cls.predictions.bias" in message
    )


def test_missing_key_is_named(released):
    state = dict(released["al"])
    del state["audio_llama_proj.bias"]
    del state["audio_Qformer.bert.encoder.layer.1.output_query.LayerNorm.weight"]
    message = _import_error(state)
    assert (
        "missing keys (2): audio_Qformer.bert.encoder.layer.1.output_query.LayerNorm.weight, "
        "audio_llama_proj.bias" in message
    )


def test_file_without_branch_keys_is_refused():
    with pytest.raises(CheckpointError, match="no Video-LLaMA branch parameters"):
        import_reference({"model": {"visual_encoder.cls_token": torch.zeros(1, 1, 1408)}}, SIZE_7B, "vit.pth")


class NotATensor:
    """Any class: unpickling it needs code execution."""


def test_pickle_needing_file_is_refused_clearly(released):
    data = to_file({"model": released["vl"], "config": NotATensor()})
    refused = r"vl\.pth: refused, the file needs pickle code execution to load \(it references \S*\.NotATensor"
    with pytest.raises(CheckpointError, match=refused):
        read_torch_file(data, "vl.pth")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable torch checkpoint .*Unsupported operand"):
        read_torch_file(b"not a checkpoint", "junk.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_torch_file(to_file([1, 2]), "list.pth")


def test_export_checks_our_state(released):
    ours, _ = import_reference(released["vl"], SIZE_7B)
    del ours["vl.llama_proj.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): vl\.llama_proj\.bias"):
        export_reference(ours, SIZE_7B)
    with pytest.raises(CheckpointError, match="is not a vllama branch file"):
        load_branches(save_branches(ours, SIZE_7B).replace(b'"7b"', b'"9b"'), "odd.safetensors")


def _bert_reference_forward(state: dict, prefix: str, queries, keys, heads: int):
    """The original BERT Q-Former forward (LAVIS Qformer.py, query-only path), written from the
    reference key names with plain tensor ops: post-LN residual blocks, exact GELU, eps 1e-12."""

    def linear(x, name):
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-12)

    def attention(x, context, name):
        b, n, width = x.shape

        def split(t):  # (B, L, width) -> (B, heads, L, width/heads)
            return t.view(b, -1, heads, width // heads).transpose(1, 2)

        q, k, v = (
            split(linear(src, f"{name}.self.{p}")) for p, src in (("query", x), ("key", context), ("value", context))
        )
        weights = (q @ k.transpose(-1, -2) / (width // heads) ** 0.5).softmax(-1)
        mixed = (weights @ v).transpose(1, 2).reshape(b, n, width)
        return norm(linear(mixed, f"{name}.output.dense") + x, f"{name}.output.LayerNorm")

    x = norm(queries, f"{prefix}.bert.embeddings.LayerNorm")
    for layer in range(2):
        p = f"{prefix}.bert.encoder.layer.{layer}"
        x = attention(x, x, f"{p}.attention")
        x = attention(x, keys, f"{p}.crossattention")
        ffn = F.gelu(linear(x, f"{p}.intermediate_query.dense"))
        x = norm(linear(ffn, f"{p}.output_query.dense") + x, f"{p}.output_query.LayerNorm")
    return x


def test_imported_weights_compute_what_the_original_computes():
    """Key mapping and architecture together: our branches, loaded from a reference-layout file,
    give the original's outputs computed straight from that file's tensors."""
    tiny = SIZES["tiny"]
    state = random_state(vl_keys(128, 64, 64, 256) | al_keys(128, 64, 64, 256), seed=7)
    state = {k: v * 0.2 if "LayerNorm.weight" not in k else 1 + 0.1 * v for k, v in state.items()}
    ours, _ = import_reference(state, tiny)
    modules = build_branches(tiny).eval()
    modules.load_state_dict(ours, strict=True)

    video = torch.randn(2, 8, 32, 64, generator=torch.Generator().manual_seed(8))  # (B, T, 32, H)
    frames = video + state["video_frame_position_embedding.weight"][:8][None, :, None, :]
    hidden = _bert_reference_forward(
        state, "video_Qformer", state["video_query_tokens"].expand(2, -1, -1), frames.reshape(2, 8 * 32, 64), heads=4
    )
    expected = hidden @ state["llama_proj.weight"].T + state["llama_proj.bias"]
    torch.testing.assert_close(modules["vl"](video), expected, rtol=1e-4, atol=1e-4)

    audio = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(9))  # (B, 8, D)
    clips = audio + state["audio_position_embedding.weight"]
    hidden = _bert_reference_forward(
        state, "audio_Qformer", state["audio_query_tokens"].expand(2, -1, -1), clips, heads=4
    )
    expected = hidden @ state["audio_llama_proj.weight"].T + state["audio_llama_proj.bias"]
    torch.testing.assert_close(modules["al"](audio), expected, rtol=1e-4, atol=1e-4)
