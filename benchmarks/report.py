"""Markdown for docs/PERFORMANCE.md: one generated block per section, between markers.

The doc's prose is written by hand; everything between `<!-- results:NAME -->` and
`<!-- /results:NAME -->` is rewritten on every run from results/NAME.json, so the tables never
drift from the JSON. A section with no block yet gets one appended at the end of the doc.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

TOOL_NAMES = {"ours": "ours", "peer": "video2dataset", "limit": "limit"}
LIMIT_NAMES = {"probe": "plain ffprobe", "decode": "plain ffmpeg decode", "transcode": "plain ffmpeg transcode"}
MODE_LIMITS = {"a": "probe", "decode": "decode", "b": "transcode"}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- results:{name} -->", f"<!-- /results:{name} -->"


def update_doc(doc: Path, blocks: dict[str, str]) -> None:
    """Replace each named block's contents; append blocks the doc does not have yet."""
    text = doc.read_text() if doc.exists() else "# Performance\n"
    for name, body in blocks.items():
        start, end = _markers(name)
        fresh = f"{start}\n{body.strip()}\n{end}"
        found = re.search(re.escape(start) + r".*?" + re.escape(end), text, re.S)
        if found:
            text = text[: found.start()] + fresh + text[found.end() :]
        else:
            text = text.rstrip() + f"\n\n## {name}\n\n{fresh}\n"
    doc.write_text(text)


def machine_line(result: dict) -> str:
    m = result.get("machine", {})
    hardware = ("cpu", "cores", "memory_gib", "os", "note")
    v = m.get("versions") or {k: val for k, val in m.items() if k not in hardware}  # older flat records
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB; {versions}"


def _image(path: Path, doc: Path, alt: str) -> str:
    return f"![{alt}]({os.path.relpath(path, doc.parent)})"


def _rate(summary: dict | None) -> str:
    if not summary:
        return "n/a"
    return f"{summary['videos_per_s']:.1f} ({summary['mb_per_s']:.2f})"


def _loads(result: dict) -> tuple[float, float]:
    loads = [
        x
        for mode in result["modes"].values()
        for tool in mode["series"].values()
        for s in tool.values()
        for x in s["load_1m"]
    ]
    return min(loads), max(loads)


def ingest_webvid(result: dict, results: Path, doc: Path) -> str:
    plan, modes = result["plan"], result["modes"]
    low, high = _loads(result)
    quick = " (quick run: sizes too small to mean anything)" if plan.get("quick") else ""
    lines = [
        f"_Measured {result['date']} on {machine_line(result)}. "
        f"{plan['settings']['processes']} processes for every tool, medians of {plan['runs']} runs"
        f"{' after a warm-up run per tool' if plan['warmup'] else ''}; 1-minute load average {low:g} to {high:g} "
        f"during the runs ({result['machine']['cores']} cores: above that, other work shared the CPUs). "
        f"Total {result['total_s']:.0f} s{quick}._",
        "",
        "videos/s (MB/s of source video) per tool; ratios are ours' videos/s over the other's.",
    ]
    for name, mode in modes.items():
        limit = LIMIT_NAMES[MODE_LIMITS[name]]
        has_peer = "peer" in mode["series"]
        lines += ["", f"**Mode {name}: {mode['title']}** (limit: {limit})", ""]
        head = ["videos", "ours"] + (["video2dataset"] if has_peer else []) + [limit]
        head += (["ours / video2dataset"] if has_peer else []) + ["ours / limit", "load"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n, ratio in mode["ratios"].items():
            s = {tool: mode["series"][tool].get(n) for tool in mode["series"]}
            loads = [x for tool in s.values() for x in tool["load_1m"]]
            row = [n, _rate(s["ours"])] + ([_rate(s["peer"])] if has_peer else []) + [_rate(s["limit"])]
            row += ([f"{ratio['ours_over_peer']:.2f}"] if has_peer else []) + [f"{ratio['ours_over_limit']:.2f}"]
            row += [f"{min(loads):g}-{max(loads):g}"]
            lines.append("| " + " | ".join(row) + " |")
        fits = [
            f"{TOOL_NAMES[t]} {f['fixed_s']:g} s + {f['marginal_videos_per_s']:g} videos/s"
            for t, f in mode.get("fit", {}).items()
            if f and f.get("marginal_videos_per_s")
        ]
        if fits:
            lines += ["", f"Per job, fixed cost + marginal rate (least squares over the sizes): {'; '.join(fits)}."]
    checked = modes.get("b", {}).get("output_check", {})
    if checked.get("ours") and checked.get("peer"):
        o, p = checked["ours"], checked["peer"]
        if "all" in o:  # every clip probed, compared as sorted lists (the tools order their samples differently)
            sizes = sorted({f"{w}x{h}" for _, w, h in o["all"]})
            lines += ["", f"Mode b output, every clip probed: {len(o['all'])} {o['codec']} clips from each tool, "
                      f"the same codec and sizes from both: {checked['same_size']} ({', '.join(sizes)})."]  # fmt: skip
        else:
            lines += ["", f"Mode b output, first clip: ours {o['codec']} {o['width']}x{o['height']}, video2dataset "
                      f"{p['codec']} {p['width']}x{p['height']} (same size: {checked['same_size']})."]  # fmt: skip
    if result.get("peer", {}).get("runtime_patch"):
        lines += ["", f"Run-time patch in the peer's process (mode b): {result['peer']['runtime_patch']}."]
    for png, alt in (("ingest_webvid_scaling.png", "videos/s vs videos"), ("ingest_webvid_ratios.png", "ratios")):
        if (results / png).exists():
            lines += ["", _image(results / png, doc, alt)]
    return "\n".join(lines)


def ingest_cc3m(result: dict, results: Path, doc: Path) -> str:
    """Our CC3M path against img2dataset alone (same URLs, same settings)."""
    runs = result.get("runs", "?")
    lines = [
        f"_Measured {result['date']} on {machine_line(result)}. {result['images']} images "
        f"({result['source_mb']:g} MB), {result.get('samples_per_shard', '?')} per shard, medians of {runs} runs "
        f"after a warm-up run._",
        "",
        "| | images/s | median s | runs (s) | load |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("pipeline", "ours (`vllama ingest cc3m`)"), ("img2dataset_alone", "img2dataset alone")):
        s = result[key]
        load = ", ".join(f"{x:g}" for x in s.get("load_1m", [])) or "not recorded"
        lines.append(f"| {label} | {s['images_per_s']:.1f} | {s['median_s']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in s['seconds'])} | {load} |")  # fmt: skip
    lines += ["", f"ours / img2dataset alone: **{result['pipeline_over_img2dataset']:.2f}**"]
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    return f"{min(values):g}-{max(values):g}" if values else "not recorded"


def features(result: dict, results: Path, doc: Path) -> str:
    """Extraction job vs the bare encoder forward, and the reuse run, per encoder size."""
    warm = " after a warm-up run" if result.get("warmup", True) else ""
    lines = [
        f"_Measured {result['date']} on {machine_line(result)}. {result['videos']} clips x 8 frames "
        f"({result['preprocess']}), batches of {result['batch_frames']} frames, medians of {result['runs']} runs"
        f"{warm}; 1-minute load {_span(result.get('load_1m_start_end', []))} (start, end)._",
        "",
        "| encoders | GFLOP/frame | job frames/s (wall) | frames/s in the actor | bare forward frames/s "
        "| job / bare | actor / bare | reuse s (same config again) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, r in result["sizes"].items():
        p, bare = r["pipeline"], r["bare_forward"]
        loads = [x["load_1m"] for x in p["runs"] if "load_1m" in x] + bare.get("load_1m", [])
        job_over = r.get("job_over_bare", p["frames_per_s_wall"] / bare["frames_per_s"])
        actor_over = r.get("actor_over_bare", p["frames_per_s_actor"] / bare["frames_per_s"])
        reuse = f"{r['reuse']['median_s']:.2f}" if "reuse" in r else "n/a"
        lines.append(f"| {size} | {r['gflop_per_frame']:g} | {p['frames_per_s_wall']:.1f} "
                     f"| {p['frames_per_s_actor']:.1f} | {bare['frames_per_s']:.1f} | **{job_over:.2f}** "
                     f"| {actor_over:.2f} | **{reuse}** "
                     f"| {_span(loads)} |")  # fmt: skip
    lines += ["", "Job frames/s include Ray Data's start-up and loading the weights; the actor's rate is the "
              "steady state a long job approaches. Reuse: `extract.run` again on the store it filled, every shard "
              "up to date, no frame encoded (checked on every run)."]  # fmt: skip
    if (results / "features.png").exists():
        lines += ["", _image(results / "features.png", doc, "features frames/s")]
    return "\n".join(lines)


def train_step(result: dict, results: Path, doc: Path) -> str:
    """Cached features vs on-the-fly encoders: step time, samples/s, data wait, and the FLOP ratios."""
    st, c, o, r = result["settings"], result["cached"], result["on_the_fly"], result["cached_over_on_the_fly"]
    cpu, real = result["cpu_model"], result["real_7b"]
    loads = [x["load_1m"] for arm in (c, o) for x in arm["runs"]]
    steady = ""  # each run starts a fresh loader: its first step also waits for the first batch to be read
    if "data_wait_share_after_first" in c:
        steady = f" ({100 * c['data_wait_share_after_first']:.1f} % over the steps after each run's first)"
    lines = [
        f"_Measured {result['date']} on {machine_line(result)}, {result['machine'].get('torch_threads', '?')} torch "
        f"threads. Batch {st['batch']} clips x {st['frames']} frames, {st['steps']} steps per arm per run, arms "
        f"alternating, medians of {st['runs']} runs{' after a warm-up step each' if st.get('warmup', True) else ''}; "
        f"1-minute load {_span(loads)}._",
        "",
        "| arm | s/step | samples/s | data-wait share | frozen encoders s/step | runs (s/step) |",
        "|---|---|---|---|---|---|",
    ]
    for label, arm in (("cached features (feature store)", c), ("on the fly (ffmpeg + ViT + Q-Former)", o)):
        enc = f"{arm['encode_s']:.2f}" if "encode_s" in arm else "0 (read from the store)"
        runs = ", ".join(f"{x['step_s']:.2f}" for x in arm["runs"])
        wait = f"{100 * arm['data_wait_share']:.1f} %"
        if "data_wait_share_after_first" in arm:
            wait += f" ({100 * arm['data_wait_share_after_first']:.1f} % after the first)"
        lines.append(f"| {label} | {arm['step_s']:.2f} | {arm['samples_per_s']:.2f} | {wait} | {enc} | {runs} |")
    lines += [
        "",
        f"cached / on the fly: step time **{r['step_time']:.2f}**, samples/s **{r['samples_per_s']:.2f}**; data wait "
        f"with cached features **{100 * c['data_wait_share']:.1f} %** of the step time{steady}.",
        "",
        "Encoder forward (8 frames) over trainable-part forward + backward, per sample:",
        "",
        "| setup | encoders GFLOP | trainable part GFLOP | ratio | LLM tokens | parameters (encoders / branch / LLM) |",
        "|---|---|---|---|---|---|",
    ]
    for label, f in (("real: ViT-g + Q-Former, LLaMA-2 7B", real),
                     (f"this CPU model (LLaMA 512 x {cpu['llm_layers']})", cpu)):  # fmt: skip
        pc = f["params"]
        lines.append(f"| {label} | {f['encoder_gflop_per_sample']:g} | {f['train_gflop_per_sample']:g} | "
                     f"**{f['encoder_over_train']:.2f}** | {f['llm_tokens']} | {pc['encoder'] / 1e6:.1f}M / "
                     f"{pc['video_branch'] / 1e6:.1f}M / {pc['llm'] / 1e6:.1f}M |")  # fmt: skip
    t = cpu.get("counted_by_torch")
    if t:
        lines += ["", f"torch's FlopCounterMode on the CPU model: {t['encoder_gflop_per_sample']:g} / "
                  f"{t['train_gflop_per_sample']:g} GFLOP, ratio {t['encoder_over_train']:.2f}."]  # fmt: skip
    if (results / "train_step.png").exists():
        lines += ["", _image(results / "train_step.png", doc, "step time by part")]
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return f"{100 * value:.1f} %" if value is not None else "n/a (no peak known)"


def gpu(result: dict, results: Path, doc: Path) -> str:
    """The real-size encoders and the 7B step on the GPU: throughput, achieved TFLOP/s, share of peak."""
    e, t, st = result["encoders"], result["train_step"], result["settings"]
    f, a = e["frames"], e["audio"]
    peak = f"{result['peak_bf16_tflops']:g} TFLOP/s dense bf16" if result["peak_bf16_tflops"] else "unknown"
    lines = [
        f"_Measured {result['date']} on **{result['device']}** (peak {peak}, {result['peak_source']}); "
        f"{machine_line(result)}. Random weights at the real shapes, medians of {st['runs']} runs of "
        f"{st['steps']} calls after a warm-up; FLOPs counted by torch._",
        "",
        "| what | per call | throughput | GFLOP per call | TFLOP/s | share of peak |",
        "|---|---|---|---|---|---|",
        f"| {e['image_encoder']} + Q-Former + ImageBind-{e['imagebind']} vision, {st['frames']} frames, "
        f"{e['dtype']} | {f['median_s']:.4f} s | {f['frames_per_s']:.0f} frames/s | {f['gflop_per_call']:g} | "
        f"{f['tflop_per_s']:g} | {_share(f['share_of_peak'])} |",
        f"| ImageBind-{e['imagebind']} audio, 2-s clips | {a['median_s']:.4f} s | {a['clips_per_s']:.0f} clips/s | "
        f"{a['gflop_per_call']:g} | {a['tflop_per_s']:g} | {_share(a['share_of_peak'])} |",
        f"| VL stage-1 step, LLM {t['model']} ({t['llm_parameters'] / 1e9:.2f}B, {t['llm_dtype']}), batch "
        f"{t['batch']} x {t['tokens_per_sample']} tokens | {t['median_s']:.4f} s | {t['samples_per_s']:.1f} samples/s "
        f"| {t['gflop_per_call']:g} | {t['tflop_per_s']:g} | {_share(t['share_of_peak'])} |",
    ]
    if "max_memory_gib" in t:
        lines += ["", f"Peak GPU memory in the training step: {t['max_memory_gib']:g} GiB."]
    return "\n".join(lines)


TABLES: dict[str, Callable[[dict, Path, Path], str]] = {
    "ingest_webvid": ingest_webvid,
    "ingest_cc3m": ingest_cc3m,
    "features": features,
    "train_step": train_step,
    "gpu": gpu,
}


def block(section, result: dict | None, status: dict | None, results: Path, doc: Path) -> str:
    """The generated block of one section: its tables, or why there are none."""
    if status and status.get("status") != "ok":
        note = f"_Last run: {status['status']} ({status.get('reason', '')})._"
        if result is None:
            return note
        if status["status"] == "skipped":  # e.g. no GPU this time: the figures of the run that had one
            render = TABLES.get(section.name)
            return f"{note}\n\n{render(result, results, doc)}" if render else note
    if result is None and section.cuda:
        return "_No GPU run yet: the machines that ran `make bench` had no CUDA device; a run on one fills this._"
    if result is None:
        return f"_No results yet: run `make bench` ({section.what})._"
    render = TABLES.get(section.name)
    if render is None:  # a section without its own renderer yet: point at its JSON
        rel = os.path.relpath(results / f"{section.name}.json", doc.parent)
        return f"_Measured {result.get('date', '?')} on {machine_line(result)}. Figures: [{section.name}.json]({rel})._"
    return render(result, results, doc)


def run_block(run: dict) -> str:
    """The last runner invocation: each section's status and wall time."""
    if not run:
        return "_No run recorded yet._"
    lines = [
        f"Last `benchmarks.run` ({run['date']}{', quick' if run.get('quick') else ''}): "
        f"{run.get('total_s', 0):.0f} s for {', '.join(run.get('selected', []))}.",
        "",
        "| section | status | seconds | load before / after |",
        "|---|---|---|---|",
    ]
    for name, s in run.get("sections", {}).items():
        loads = f"{s['load_1m_before']:g} / {s['load_1m_after']:g}" if "load_1m_before" in s else ""
        status = s["status"] + (f": {s['reason']}" if s.get("reason") else "")
        lines.append(f"| {name} | {status} | {s.get('seconds', '')} | {loads} |")
    return "\n".join(lines)
