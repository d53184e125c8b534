"""`vllama plan`: FLOPs against torch's own counter, the plan's arithmetic, measured vs assumed figures, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.branches import AudioBranch, VideoBranch
from model.config import LLAMA2_7B, SIZES
from model.image_encoder import IMAGE_ENCODER_SIZES, FrozenImageEncoder
from model.imagebind import IMAGEBIND_SIZES, ImageBindEncoder
from orchestration import flops
from orchestration.cli import build_parser, main
from orchestration.plan import PlanConfig, load_recipe, make_plan, parse_count
from orchestration.unit_costs import FALLBACK_CLIP_INGEST_CORE_S, FALLBACK_EFFICIENCY, FALLBACK_IMAGE_INGEST_CORE_S

REPO = Path(__file__).resolve().parents[2]
STAGES = [
    "ingest WebVid", "ingest images", "ingest instruct", "features stage-1 data", "features instruct",
    "train VL stage 1", "train VL stage 2", "train AL stage 1", "train AL stage 2",
]  # fmt: skip


@pytest.fixture
def counted_attention():
    """torch's FlopCounterMode sees attention only as plain matmuls: the math SDPA kernel, no MHA fast path."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(before)


def torch_flops(fn) -> int:
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def fake(build):
    """A module with shapes but no memory (real sizes: 1B-parameter ViT) and the fake mode to run it in."""
    with torch.device("meta"):
        module = build()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        module = module.to_empty(device="cpu")
    return module, mode


@pytest.mark.parametrize("image_size,imagebind_size", [("tiny", "tiny"), ("eva_vit_g", "huge")])
def test_encoder_flops_equal_torch_flop_counter(counted_attention, image_size, imagebind_size):
    enc, mode = fake(lambda: FrozenImageEncoder(IMAGE_ENCODER_SIZES[image_size]))
    with mode:
        measured = torch_flops(lambda: enc(torch.zeros(2, 3, 224, 224))) / 2  # per frame
    assert measured == pytest.approx(flops.image_encoder_flops(IMAGE_ENCODER_SIZES[image_size]), rel=1e-9)

    cfg = IMAGEBIND_SIZES[imagebind_size]
    ib, mode = fake(lambda: ImageBindEncoder(cfg))
    with mode:
        vision = torch_flops(lambda: ib.encode_vision(torch.zeros(2, 3, 224, 224))) / 2
        audio = torch_flops(lambda: ib.encode_audio(torch.zeros(1, 2, 1, 128, 204))) / 2  # per 2-s clip
    assert vision == pytest.approx(flops.imagebind_vision_flops(cfg), rel=1e-9)
    assert audio == pytest.approx(flops.imagebind_audio_flops(cfg), rel=1e-9)
    if image_size == "eva_vit_g":  # the brief's figures: ViT-g + Q-Former ~0.52-0.53 TFLOP, ImageBind-H ~0.33
        assert measured / 1e12 == pytest.approx(0.533, abs=0.001)
        assert vision / 1e12 == pytest.approx(0.335, abs=0.001)


def test_branch_flops_equal_torch_flop_counter(counted_attention):
    size = SIZES["7b"]
    vl, mode = fake(lambda: VideoBranch(size.vl, size.llm.hidden))
    with mode:
        video = torch_flops(lambda: vl(torch.zeros(1, 8, 32, size.vl.encoder_width)))
    assert video == pytest.approx(flops.branch_flops(size.vl, 8 * 32, size.llm.hidden), rel=1e-9)
    al, mode = fake(lambda: AudioBranch(size.al, size.llm.hidden))
    with mode:
        audio = torch_flops(lambda: al(torch.zeros(1, 8, size.al.encoder_width)))
    assert audio == pytest.approx(flops.branch_flops(size.al, 8, size.llm.hidden), rel=1e-9)


def test_frozen_llm_forward_and_backward_equal_autograd(counted_attention):
    """Frozen weights, gradients only to the input embeddings: autograd does ~2x the forward, not 3x."""
    from transformers import LlamaForCausalLM

    from model.tiny import llama_config

    llm = SIZES["tiny"].llm
    config = llama_config(llm)
    config._attn_implementation = "eager"  # plain matmuls, which the counter sees
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).requires_grad_(False)
    tokens = 40
    embeds = torch.randn(1, tokens, llm.hidden, requires_grad=True)
    labels = torch.randint(0, llm.vocab_size, (1, tokens))
    forward = torch_flops(lambda: model(inputs_embeds=embeds))
    both = torch_flops(lambda: model(inputs_embeds=embeds, labels=labels).loss.backward())
    assert forward == pytest.approx(sum(flops.llm_flops(llm, tokens)), rel=1e-9)
    assert both == pytest.approx(flops.frozen_llm_train_flops(llm, tokens), rel=1e-9)
    assert both / forward < 2.1  # full training (weights too) would be ~3x
    assert embeds.grad is not None and all(p.grad is None for p in model.parameters())


def test_frozen_7b_costs_about_4_flops_per_parameter_per_token():
    params = LLAMA2_7B.layers * (4 * 4096**2 + 3 * 4096 * 11008) + 4096 * 32000  # matmul weights + lm_head
    per_token = flops.frozen_llm_train_flops(LLAMA2_7B, 65) / 65
    assert per_token / params == pytest.approx(4.0, abs=0.05)  # short stage-1 sequences: attention is ~1 %


def test_parse_count():
    assert [parse_count(t) for t in ("2.5M", "595K", "595k", "12_000", "1e6", "7", "1.2B")] == [
        2_500_000, 595_000, 595_000, 12_000, 1_000_000, 7, 1_200_000_000,
    ]  # fmt: skip
    for bad in ("2.5X", "", "M", "-3", "abc"):
        with pytest.raises(ValueError, match="write e.g. 2500000, 2.5M or 595K"):
            parse_count(bad)
    with pytest.raises(ValueError, match="not a whole number"):
        parse_count("1.5")


@pytest.fixture(scope="module")
def base():
    return make_plan(PlanConfig(videos=2_500_000, images=595_000, gpus=8))


def rows(plan) -> dict[tuple[str, str], object]:
    return {(r.stage, r.path): r for r in plan.rows}


def test_recipe_is_the_originals():
    r = load_recipe(PlanConfig(), "vl", 1)  # train_configs/visionbranch_stage1_pretrain.yaml: 2500 x 5, 32 x 8 GPUs
    assert (r.samples, r.global_batch, r.tokens) == (2500 * 5 * 256, 256, 1 + 32 + 32)
    assert r.video_share == pytest.approx(100 / 124)
    assert load_recipe(PlanConfig(), "al", 1).samples == 5000 * 5 * 256
    assert load_recipe(PlanConfig(), "vl", 2).samples == 1000 * 3 * 32


def test_defaults_match_the_feature_config():
    doc = yaml.safe_load((REPO / "configs/features/7b.yaml").read_text())
    assert (PlanConfig().views, PlanConfig().frames) == (doc["preprocess"]["views"], doc["preprocess"]["num_frames"])


def test_doubling_gpus_halves_gpu_bound_stages(base):
    double = rows(make_plan(PlanConfig(videos=2_500_000, images=595_000, gpus=16)))
    for key, row in rows(base).items():
        if row.gpu_hours:
            assert double[key].hours == pytest.approx(row.hours / 2, rel=1e-9), key
            assert double[key].gpu_hours == pytest.approx(row.gpu_hours, rel=1e-9), key
        else:  # ingestion runs on the CPU fleet
            assert double[key].hours == row.hours, key


def test_stage_two_cannot_use_more_gpus_than_its_global_batch():
    at = {n: rows(make_plan(PlanConfig(gpus=n))) for n in (32, 64)}
    key = ("train VL stage 2", "cached")
    assert at[64][key].hours == pytest.approx(at[32][key].hours)  # global batch 32: 32 GPUs do the work
    assert "32 GPUs" in at[64][key].units
    assert at[64][("train VL stage 1", "cached")].hours == pytest.approx(
        at[32][("train VL stage 1", "cached")].hours / 2
    )


def test_cached_training_is_cheaper_than_on_the_fly(base):
    r = rows(base)
    for stage in STAGES[5:]:
        cached, fly = r[(stage, "cached")], r[(stage, "on-the-fly")]
        assert cached.flops < fly.flops and cached.hours < fly.hours and cached.cost_usd < fly.cost_usd, stage


def test_feature_stage_arithmetic(base):
    """FLOPs = frames x (ViT-g + Q-Former + ImageBind vision); hours at peak x MFU x measured pipeline efficiency."""
    row, enc, gpu = rows(base)[("features stage-1 data", "cached")], base.encoders, base.gpu
    frames = (2_500_000 * 8 + 595_000) * 4
    assert row.flops == pytest.approx(frames * (enc.vl_frame + enc.ibv_frame))
    features = json.loads((REPO / "benchmarks/results/features.json").read_text())
    efficiency = 1 - features["sizes"]["small"]["overhead_vs_bare"]
    assert row.bound == "GPU"
    assert row.hours == pytest.approx(row.flops / (8 * 312e12 * 0.40 * efficiency) / 3600)
    assert row.cost_usd == pytest.approx(row.hours * 8 * 21.96 / 8)
    assert gpu.name == "A100" and gpu.cpus_per_gpu == 12


def test_decode_bound_when_nodes_have_few_cpus():
    plan = make_plan(PlanConfig(cpus_per_gpu=0.5))
    row = rows(plan)[("features stage-1 data", "cached")]
    from orchestration.unit_costs import measure

    decode = measure(plan.cfg).clip_decode_core_s
    assert row.bound == "decode CPUs"
    assert row.hours == pytest.approx(2_500_000 * decode / (8 * 0.5) / 3600)


def test_ingestion_is_cpu_or_download_bound(base):
    r = rows(base)
    webvid = r[("ingest WebVid", "all")]
    images = rows(make_plan(PlanConfig(download_gbps=0.5)))[("ingest images", "all")]  # a thin pipe
    assert webvid.bound == "CPU" and images.bound == "download"
    assert images.hours == pytest.approx(595_000 * 0.05 / 1000 * 8 / 0.5 / 3600)  # GB x 8 / Gbit/s
    fast = rows(make_plan(PlanConfig(download_gbps=100)))[("ingest WebVid", "all")]
    wider = rows(make_plan(PlanConfig(download_gbps=100, cpu_cores=512)))[("ingest WebVid", "all")]
    assert fast.hours == pytest.approx(webvid.hours) and fast.bound == "CPU"
    assert wider.hours == pytest.approx(webvid.hours / 2) and wider.bound == "CPU"
    assert wider.cost_usd == pytest.approx(webvid.cost_usd)  # the same core-hours and bytes through the NAT
    wider = rows(make_plan(PlanConfig(cpu_cores=512)))[("ingest WebVid", "all")]  # now the 2 Gbit/s link binds
    assert wider.bound == "download" and wider.hours == pytest.approx(2_500_000 * 2.5 / 1000 * 8 / 2.0 / 3600)


def test_epochs_set_stage_one_samples_only():
    r = rows(make_plan(PlanConfig(videos=1_000_000, images=200_000, epochs=2)))
    assert r[("train VL stage 1", "cached")].units.startswith("2.4M samples")
    assert r[("train AL stage 1", "cached")].units.startswith("2.4M samples")
    assert r[("train VL stage 2", "cached")].units.startswith("96K samples")


def test_measured_figures_name_the_machine(base):
    assert [line.split(" ")[0] for line in base.measured] == ["ingest_webvid.json", "ingest_cc3m.json", "features.json"]
    assert all("AMD EPYC x2 cores" in line and "2026-11-24" in line for line in base.measured)


def test_missing_results_say_which_assumption_replaces_them(tmp_path):
    plan = make_plan(PlanConfig(results=str(tmp_path), download_gbps=100))
    assert [line.split(":")[0] for line in plan.measured] == [
        "ingest_webvid.json missing", "ingest_cc3m.json missing", "features.json missing",
    ]  # fmt: skip
    assert f"assumed {FALLBACK_CLIP_INGEST_CORE_S} core-s" in plan.measured[0]
    assert f"assumed {FALLBACK_IMAGE_INGEST_CORE_S} core-s" in plan.measured[1]
    assert f"assumed {FALLBACK_EFFICIENCY}" in plan.measured[2]
    r = rows(plan)
    assert r[("ingest WebVid", "all")].hours == pytest.approx(2_500_000 * FALLBACK_CLIP_INGEST_CORE_S / 256 / 3600)


def test_a_damaged_result_file_is_named(tmp_path):
    (tmp_path / "features.json").write_text('{"sizes": {}}')
    with pytest.raises(ValueError, match=f"{tmp_path}/features.json: unreadable .*re-run its benchmark"):
        make_plan(PlanConfig(results=str(tmp_path)))
    (tmp_path / "features.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{tmp_path}/features.json: unreadable \\(JSONDecodeError"):
        make_plan(PlanConfig(results=str(tmp_path)))


def test_notes_flag_unread_views_and_small_steps():
    plan = make_plan(PlanConfig(gpus=64, gpu="h100"))
    assert any("--views 3 cuts the stage-1 feature FLOPs by 25%" in n for n in plan.notes)
    assert any(n.startswith("VL stage 1: 260 tokens per GPU per step") for n in plan.notes)
    assert not any("--views" in n for n in make_plan(PlanConfig(views=3)).notes)


def test_cli_prints_every_stage_and_where_figures_come_from(capsys):
    assert main(["plan", "--videos", "2.5M", "--images", "595K", "--gpus", "64", "--gpu", "a100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vllama plan: 2,500,000 clips + 595,000 images")
    assert "64 x A100" in out
    for stage in [*STAGES, "total, cached", "total, on-the-fly"]:
        assert f"\n{stage} " in out, stage
    for section in ("measured:", "assumptions:", "notes:", "AMD EPYC x2 cores", "4 x params x tokens", "$21.96/h"):
        assert section in out, section


def test_cli_json(capsys):
    assert main(["plan", "--gpus", "16", "--views", "2", "--clip-size", "640x360", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["config"]["gpus"], doc["config"]["views"], doc["config"]["clip_width"]) == (16, 2, 640)
    assert sorted({s["stage"] for s in doc["stages"]}) == sorted(STAGES)
    assert set(doc["totals"]) == {"cached", "on-the-fly"}
    assert doc["totals"]["cached"]["cost_usd"] == pytest.approx(
        sum(s["cost_usd"] for s in doc["stages"] if s["path"] in ("all", "cached"))
    )
    assert doc["encoder_gflop"]["vl_frame"] == pytest.approx(533.467, abs=1e-3)


def test_cli_bad_input_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--videos", "2.5X"])
    assert exit_.value.code == 2
    assert "'2.5X' is not a count; write e.g. 2500000, 2.5M or 595K" in capsys.readouterr().err
    assert main(["plan", "--mfu", "1.5"]) == 2
    assert "mfu" in capsys.readouterr().err
    assert main(["plan", "--train-configs", str(tmp_path)]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["plan"]
    for action in sub._actions:
        assert action.help and len(action.help) > 15, action.dest
        for flag in action.option_strings:
            assert flag in out, flag
    for word in ("MFU", "on the fly", "benchmarks/results", "2.5M", "(default: 2,500,000)", "(default: 596x336)"):
        assert word in out, word
    assert math.isclose(PlanConfig().cpu_core_hour_usd, 1.36 / 32)
