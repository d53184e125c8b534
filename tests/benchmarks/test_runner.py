"""The benchmark runner, so it cannot silently rot: its arithmetic on fixed numbers; in seconds, the
plots and doc tables redrawn from the committed results and one reduced section run through the
runner; and one reduced end-to-end run of every section (`benchmarks.run --quick`, ~2.5 min on 2
cores) with the real video2dataset in its own venv.

The end-to-end test builds benchmarks/.peer-venv the way `make bench` does (PyPI is reachable in
CI; ~1.5 min with uv's cache warm, a few more cold) and reuses it afterwards, then runs every
contender once at a few videos (each video2dataset job starts its own worker pool, ~20 s): the
figures mean nothing at that size, the checks do (every tool wrote every video, the peer's own
stats agree, the JSON's medians and ratios follow from its runs, plots and doc tables are
regenerated).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import report
from benchmarks.common import Series
from benchmarks.ingest_webvid import QUICK as QUICK_PLAN
from benchmarks.ingest_webvid import fit, mode_b_selected, videos_needed
from benchmarks.run import SECTIONS
from benchmarks.run import main as run_main
from benchmarks.train_flops import encoder_flops, fit_layers, llm_flops, real_7b, sample_flops
from pipelines.sample_plan import plan_video

REPO = Path(__file__).resolve().parents[2]


def test_series_summary_is_the_median_of_its_runs():
    s = Series(videos=100, megabytes=2.0)
    for seconds, load in ((4.0, 1.5), (2.0, 1.0), (5.0, 3.0)):
        s.add(seconds, load)
    doc = s.summary()
    assert doc["median_s"] == 4.0
    assert doc["videos_per_s"] == 25.0
    assert doc["mb_per_s"] == 0.5
    assert doc["load_1m"] == [1.5, 1.0, 3.0]


def test_fit_recovers_fixed_cost_and_marginal_rate():
    # seconds = 10 + videos / 50, exactly
    series = {}
    for n in (100, 500, 2000):
        series[n] = Series(videos=n, megabytes=1.0)
        series[n].add(10 + n / 50, 0.0)
    assert fit(series) == {"fixed_s": 10.0, "marginal_videos_per_s": 50.0}
    assert fit({100: series[100]}) == {}


def test_mode_b_inputs_are_landscape_silent_and_tall_enough():
    n = videos_needed(QUICK_PLAN)
    chosen = [v for v in (plan_video(0, i, n, 0.0) for i in range(n)) if mode_b_selected(v, 224)]
    assert len(chosen) >= max(QUICK_PLAN.sizes["b"])
    assert all(v.width >= v.height >= 224 and not v.has_audio for v in chosen)


def test_update_doc_rewrites_blocks_and_appends_new_ones(tmp_path):
    doc = tmp_path / "PERF.md"
    doc.write_text("# P\n\nprose\n<!-- results:a -->\nold\n<!-- /results:a -->\nmore prose\n")
    report.update_doc(doc, {"a": "new table", "b": "fresh"})
    text = doc.read_text()
    assert "old" not in text
    assert "<!-- results:a -->\nnew table\n<!-- /results:a -->\nmore prose" in text
    assert text.rstrip().endswith("## b\n\n<!-- results:b -->\nfresh\n<!-- /results:b -->")
    report.update_doc(doc, {"a": "newer"})  # idempotent layout: one block each
    assert doc.read_text().count("<!-- results:a -->") == 1


def test_real_7b_flops_match_the_published_sizes():
    real = real_7b(text_tokens=30)
    assert real["encoder_gflop_per_frame"] == pytest.approx(533, rel=0.01)  # ViT-g + Q-Former, ~0.53 TFLOP
    assert real["params"]["llm"] == 6_738_415_616  # LLaMA-2 7B as published
    assert real["params"]["encoder"] == pytest.approx(1.09e9, rel=0.01)  # EVA ViT-g (39 blocks) + Q-Former
    # LLaMA fwd + bwd to the soft tokens = 2 x 2 x 6.6B non-embedding weights x 62 tokens, plus attention
    assert real["llm_tokens"] == 62 and real["train_gflop_per_sample"] == pytest.approx(1650, rel=0.01)
    assert real["encoder_over_train"] == pytest.approx(2.59, abs=0.01)


def test_flop_formulas_agree_with_torch_counting_on_tiny_modules():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaForCausalLM

    from model.config import SIZES
    from model.image_encoder import IMAGE_ENCODER_SIZES, FrozenImageEncoder
    from model.tiny import llama_config

    torch.manual_seed(0)
    enc = IMAGE_ENCODER_SIZES["tiny"]
    # the math attention kernel: torch counts its matmuls (CPU's fused kernel goes uncounted)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        FrozenImageEncoder(enc).eval()(torch.zeros(1, 3, 224, 224))
    assert encoder_flops(enc)["total"] == pytest.approx(counter.get_total_flops(), rel=0.05)
    llm = LlamaForCausalLM(llama_config(SIZES["tiny"].llm)).eval()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        llm(input_ids=torch.zeros(1, 40, dtype=torch.long))
    assert llm_flops(SIZES["tiny"].llm, 40) == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_cpu_size_is_fitted_to_the_real_ratio():
    from benchmarks.train_flops import CPU_SIZE, cpu_size
    from model.image_encoder import IMAGE_ENCODER_SIZES

    target = real_7b()["encoder_over_train"]
    layers = fit_layers(target, text_tokens=10)
    got = sample_flops(cpu_size(layers), IMAGE_ENCODER_SIZES[CPU_SIZE], 10)["encoder_over_train"]
    assert got == pytest.approx(target, rel=0.05)
    neighbours = [sample_flops(cpu_size(n), IMAGE_ENCODER_SIZES[CPU_SIZE], 10)["encoder_over_train"]
                  for n in (layers - 1, layers + 1)]  # fmt: skip
    assert all(abs(x - target) >= abs(got - target) for x in neighbours)


def result_blocks(text: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- results:(\w+) -->\n(.*?)<!-- /results:\1 -->", text, re.S))


def test_committed_results_redraw_into_the_committed_doc(tmp_path):
    """`--report-only` over benchmarks/results/: every plot drawn again, and the doc's tables come out
    exactly as committed (the doc is what the report code makes of the JSON next to it)."""
    results, doc = tmp_path / "benchmarks" / "results", tmp_path / "docs" / "PERFORMANCE.md"  # the repo's layout
    doc.parent.mkdir()
    shutil.copytree(REPO / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*.png"))
    committed = (REPO / "docs" / "PERFORMANCE.md").read_text()
    stale = re.sub(r"(<!-- results:(\w+) -->\n).*?(<!-- /results:\2 -->)", r"\1stale\n\3", committed, flags=re.S)
    doc.write_text(stale)
    assert run_main(["--report-only", "--results", str(results), "--doc", str(doc)]) == 0
    blocks = result_blocks(doc.read_text())
    assert blocks == result_blocks(committed) and set(blocks) >= {s.name for s in SECTIONS}
    for png in sorted((REPO / "benchmarks" / "results").glob("*.png")):
        assert (results / png.name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name


def test_runner_runs_a_reduced_section_in_its_own_process(tmp_path):
    """The runner's own path (subprocess, status, run.json, plots, doc) on its cheapest section, ~15 s."""
    results, doc, work = tmp_path / "results", tmp_path / "PERFORMANCE.md", tmp_path / "work"
    doc.write_text((REPO / "docs" / "PERFORMANCE.md").read_text())
    args = ["--quick", "--only", "train_step", "--results", str(results), "--doc", str(doc), "--work", str(work)]
    assert run_main(args) == 0
    run = json.loads((results / "run.json").read_text())
    assert run["quick"] is True and run["selected"] == ["train_step"]
    assert run["sections"]["train_step"]["status"] == "ok" and run["sections"]["train_step"]["seconds"] > 0
    train = json.loads((results / "train_step.json").read_text())
    assert train["cached"]["runs"][0]["steps"] == 1 and train["machine"]["cores"] == os.cpu_count()
    assert (results / "train_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratio = train["cached_over_on_the_fly"]["step_time"]
    assert f"cached / on the fly: step time **{ratio:.2f}**" in doc.read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quick_run_end_to_end(tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text((REPO / "docs" / "PERFORMANCE.md").read_text())
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    work = tmp_path / "work"
    cmd = ["-m", "benchmarks.run", "--quick", "--results", str(results), "--doc", str(doc), "--work", str(work)]
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    result = json.loads((results / "ingest_webvid.json").read_text())
    assert result["machine"]["cores"] == os.cpu_count()
    versions = result["machine"]["versions"]
    assert versions["video2dataset"] == "1.3.0" and versions["ray"] and versions["ffmpeg"]
    assert result["peer"]["versions"]["torch"] == "2.1.2"  # its own pins, not ours
    assert "encode_formats" in result["peer"]["runtime_patch"]

    expected = {"a": {"ours", "peer", "limit"}, "decode": {"ours", "limit"}, "b": {"ours", "peer", "limit"}}
    for name, tools in expected.items():
        mode = result["modes"][name]
        assert set(mode["series"]) == tools
        for tool, by_size in mode["series"].items():
            for n, s in by_size.items():
                assert s["videos"] == int(n) and len(s["seconds"]) == QUICK_PLAN.runs == len(s["load_1m"])
                assert s["median_s"] == round(statistics.median(s["seconds"]), 3)
                assert s["videos_per_s"] == round(int(n) / s["median_s"], 2)
                if tool != "limit":  # every video in the tars, and (peer) in its own stats
                    assert all(run["mp4_members"] == int(n) for run in s["runs"])
                if tool == "peer":
                    assert all(run["successes"] == run["count"] == int(n) for run in s["runs"])
        for n, ratio in mode["ratios"].items():
            rate = {t: mode["series"][t][n]["videos"] / mode["series"][t][n]["median_s"] for t in tools}
            assert ratio["ours_over_limit"] == pytest.approx(rate["ours"] / rate["limit"], abs=1e-3)
    check = result["modes"]["b"]["output_check"]
    assert check["ours"]["height"] == check["peer"]["height"] == 224 and check["same_size"]
    assert check["ours"]["codec"] == check["peer"]["codec"] == "h264"

    for png in ("ingest_webvid_scaling.png", "ingest_webvid_ratios.png"):
        data = (results / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    text = doc.read_text()
    ours_a = result["modes"]["a"]["series"]["ours"][str(QUICK_PLAN.sizes["a"][0])]
    assert f"| {QUICK_PLAN.sizes['a'][0]} | {ours_a['videos_per_s']:.1f} ({ours_a['mb_per_s']:.2f}) |" in text
    assert "(results/ingest_webvid_scaling.png)" in text
    run = json.loads((results / "run.json").read_text())
    assert run["quick"] is True and set(run["sections"]) == {s.name for s in SECTIONS}
    for s in SECTIONS:  # the GPU section runs where CUDA is (its own tests cover it), and says why not elsewhere
        expected = "skipped" if s.cuda and not torch.cuda.is_available() else "ok"
        assert run["sections"][s.name]["status"] == expected, run["sections"][s.name]

    cc3m = json.loads((results / "ingest_cc3m.json").read_text())  # the images section, at 40 images
    assert cc3m["images"] == 40 and cc3m["pipeline"]["images_per_s"] > 0
    assert f"ours / img2dataset alone: **{cc3m['pipeline_over_img2dataset']:.2f}**" in text

    feats = json.loads((results / "features.json").read_text())  # tiny encoders, 4 clips, one run
    tiny = feats["sizes"]["tiny"]
    assert tiny["frames_per_run"] == 4 * 8 and feats["quick"] is True
    assert tiny["reuse"]["median_s"] < tiny["pipeline"]["job_s_median"]  # nothing computed the second time
    assert tiny["job_over_bare"] == round(
        tiny["pipeline"]["frames_per_s_wall"] / tiny["bare_forward"]["frames_per_s"], 3
    )
    assert f"| tiny | {tiny['gflop_per_frame']:g} | {tiny['pipeline']['frames_per_s_wall']:.1f} " in text

    train = json.loads((results / "train_step.json").read_text())  # batch 2, one step per arm
    c, o = train["cached"], train["on_the_fly"]
    assert [len(b) for b in train["batches"]] == [2, 2] and c["runs"][0]["steps"] == o["runs"][0]["steps"] == 1
    assert 0 <= c["data_wait_share"] < 1 and 0 < o["encode_s"] < o["step_s"]
    assert train["cached_over_on_the_fly"]["step_time"] == round(c["step_s"] / o["step_s"], 4)
    assert train["cpu_model"]["encoder_over_train"] == pytest.approx(train["real_7b"]["encoder_over_train"], rel=0.1)
    assert f"cached / on the fly: step time **{train['cached_over_on_the_fly']['step_time']:.2f}**" in text
    for png in ("features.png", "train_step.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
