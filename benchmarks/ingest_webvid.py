"""WebVid ingestion: ours vs video2dataset vs the plain ffmpeg limit, on the same files.

    .venv/bin/python -m benchmarks.ingest_webvid [--quick] [--results DIR] [--work DIR]

Generates a WebVid sample set (pipelines.sample_data, cached under the work folder), serves it
on loopback, and for each mode and size runs the three contenders of benchmarks/ingest_tools.py:

  a       download + ffprobe check + webdataset shards, no re-encode. ffprobe is the only check
          video2dataset has (FFProbeSubsampler), so ours runs with verify_decode=false here.
          Limit: plain ffprobe.
  decode  ours as shipped (verify_decode=true: ffprobe + a full decode of every frame), against
          plain `ffmpeg -f null` decoding. video2dataset has no decode check, so it sits this out.
  b       mode a plus a downscale to 224 px (video2dataset's ResolutionSubsampler, our transcode):
          x264 preset medium, crf 23 for both (video2dataset cannot set them, those are ffmpeg's
          defaults). Inputs are the clips where both tools do identical work (see `mode_b_videos`).
          Limit: the same plain ffmpeg transcode.

Fairness: the same CSV from the same server, the same tar output, the same number of processes
and download threads, shards sized so every process gets two (video2dataset's pool never
recycles a worker), one warm-up run per tool before its first measured run, then rounds that run every tool once each
(load drift hits all alike), medians over the rounds, each run's output checked.
Writes <results>/ingest_webvid.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from benchmarks import ingest_tools, peers
from benchmarks.common import RESULTS, WORK, Series, StaticServer, load_1m, machine
from benchmarks.ingest_tools import Case, Mode, Settings
from pipelines import sample_formats
from pipelines.sample_data import Sample, SampleDataConfig, SampleManifest, generate
from pipelines.sample_plan import plan_video

MODES = (
    Mode("a", "download + ffprobe check + shard", verify_decode=False, transcode=False, peer="a", limit="probe"),
    Mode(
        "decode",
        "download + ffprobe + full decode check + shard (ours as shipped)",
        verify_decode=True,
        transcode=False,
        peer=None,
        limit="decode",
    ),
    Mode(
        "b",
        "download + ffprobe + downscale to 224 px (x264 medium, crf 23) + shard",
        verify_decode=False,
        transcode=True,
        peer="b",
        limit="transcode",
    ),
)


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions; the default fits about 6-8 minutes on the shared 2 cores."""

    sizes: dict[str, tuple[int, ...]]  # mode -> numbers of videos
    runs: int = 3  # measured rounds per size (the figures are their medians)
    warmup: bool = True
    shards_per_process: int = 2
    settings: Settings = Settings(processes=2, threads=8, short_side=224, preset="medium", crf=23)


# Cut from a: 100/500/2000, decode: 100/500, b: 25/100 (18 min alone on the shared machine) so that
# `make bench` with every section stays under 20 minutes; the peer's ~25 s start per job dominates.
# Mode a at 100 and 1,000 still shows the fixed cost and the marginal rate (2,000 in the range's
# place did not fit 20 minutes with other engineers' jobs at load 15-30 on the machine).
FULL = Plan(sizes={"a": (100, 1000), "decode": (100,), "b": (25,)})
QUICK = Plan(sizes={"a": (6,), "decode": (6,), "b": (3,)}, runs=1, warmup=False)


def mode_b_selected(s: Sample, short_side: int) -> bool:
    """Clips where both tools do the same work: landscape (video2dataset scales the height, not the short
    side), at least `short_side` high (it upscales smaller ones; ours never does), and silent (its
    subsampler drops the audio; ours re-encodes it)."""
    return s.width >= s.height >= short_side and not s.has_audio


def videos_needed(plan: Plan) -> int:
    """The sample-set size that holds the largest mode-a case and enough mode-b clips."""
    n, eligible, want = max(max(v) for k, v in plan.sizes.items() if k != "b"), 0, max(plan.sizes["b"])
    i = 0
    while eligible < want:
        eligible += mode_b_selected(plan_video(0, i, i + 1, 0.0), plan.settings.short_side)
        i += 1
    return max(n, i)


def make_cases(plan: Plan, sample: SampleManifest, base_url: str, work: Path) -> list[Case]:
    cases = []
    for mode in MODES:
        pool = sample.videos
        if mode.transcode:
            pool = tuple(v for v in pool if mode_b_selected(v, plan.settings.short_side))
        for n in plan.sizes[mode.name]:
            rows = pool[:n]
            csv = work / "csv" / f"{mode.name}-{n}.csv"
            csv.parent.mkdir(parents=True, exist_ok=True)
            csv.write_text(sample_formats.webvid_csv(rows, base_url))
            files = tuple(Path(sample.path(v.file)) for v in rows)
            per_shard = math.ceil(n / (plan.settings.processes * plan.shards_per_process))
            mb = sum(f.stat().st_size for f in files) / 1e6
            cases.append(Case(mode, n, str(csv), files, mb, per_shard))
    return cases


def fit(series: dict[int, Series]) -> dict:
    """Median seconds = fixed + videos / marginal rate, least squares over the sizes."""
    sizes = sorted(series)
    if len(sizes) < 2:
        return {}
    slope, intercept = statistics.linear_regression(sizes, [statistics.median(series[n].seconds) for n in sizes])
    return {"fixed_s": round(intercept, 2), "marginal_videos_per_s": round(1 / slope, 2) if slope > 0 else None}


def ratios(tools: dict[str, dict[int, Series]], n: int) -> dict:
    rate = {tool: series[n].videos / statistics.median(series[n].seconds) for tool, series in tools.items()}
    out = {"ours_over_limit": round(rate["ours"] / rate["limit"], 3)}
    if "peer" in rate:
        out["ours_over_peer"] = round(rate["ours"] / rate["peer"], 3)
    return out


def run_mode(mode: Mode, cases: list[Case], plan: Plan, peer: peers.PeerProcess, work: Path, warmed: set) -> dict:
    """A warm-up run of each tool not in `warmed` yet, then `plan.runs` rounds of every tool at every size."""
    s = plan.settings
    contenders = {
        "ours": lambda c, out: ingest_tools.ours(c, s, out, work / "spool"),
        "peer": lambda c, out: ingest_tools.peer(peer, c, s, out, work / "peer-tmp"),
        "limit": lambda c, out: ingest_tools.limit(c, s, out),
    }
    if mode.peer is None:
        del contenders["peer"]
    result: dict = {"title": mode.title, "warmup_s": {}, "series": {}, "output_check": {}}
    tools = {tool: {c.videos: Series(c.videos, c.megabytes) for c in cases} for tool in contenders}

    def once(tool: str, case: Case) -> tuple[float, dict]:
        out = work / "out" / tool
        shutil.rmtree(out, ignore_errors=True)  # every run starts from an empty output folder
        seconds, checks = contenders[tool](case, out)
        if tool != "limit" and mode.transcode and tool not in result["output_check"]:
            result["output_check"][tool] = ingest_tools.written_videos(out)
        return seconds, checks

    for tool in contenders:
        if plan.warmup and tool not in warmed:  # once per tool: Ray's workers persist, and each peer
            result["warmup_s"][tool] = round(once(tool, cases[0])[0], 2)  # job starts its own pool anyway
            warmed.add(tool)
    for case in cases:
        for r in range(plan.runs):
            for tool in contenders:
                load = load_1m()
                seconds, checks = once(tool, case)
                tools[tool][case.videos].add(seconds, load, checks)
                print(
                    f"  {mode.name} {case.videos:5d} videos {tool:5s} run {r + 1}: {seconds:7.2f} s (load {load})",
                    flush=True,
                )
    checked = result["output_check"]
    if "ours" in checked and "peer" in checked:
        ours, peer = checked["ours"]["all"], checked["peer"]["all"]
        checked["same_size"] = ours == peer  # every clip: same codec and size, whichever order they were written
        if not checked["same_size"]:
            differ = sorted(set(map(tuple, ours)) ^ set(map(tuple, peer)))
            raise ingest_tools.ToolFailed(f"mode {mode.name}: the tools wrote different videos, e.g. {differ[:4]}")
    result["series"] = {t: {str(n): ser.summary() for n, ser in by_n.items()} for t, by_n in tools.items()}
    result["fit"] = {t: fit(by_n) for t, by_n in tools.items()}
    result["ratios"] = {str(c.videos): ratios(tools, c.videos) for c in cases}
    return result


def describe_inputs(sample: SampleManifest, cases: list[Case]) -> dict:
    return {
        "sample_set": {
            "videos": len(sample.videos),
            "seed": sample.seed,
            "bytes": sample.stats.bytes,
            "made_this_run": sample.stats.made,
            "generate_s": round(sample.stats.seconds, 1),
        },
        "cases": [
            {
                "mode": c.mode.name,
                "videos": c.videos,
                "source_mb": round(c.megabytes, 3),
                "per_shard": c.samples_per_shard,
            }
            for c in cases
        ],
        "mode_b_selection": " ".join(mode_b_selected.__doc__.split()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks the machinery only")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK / "ingest_webvid")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    # Ray Data re-reads this whenever it configures its loggers: its per-dataset INFO lines would
    # bury the one progress line per run printed below.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    t0 = time.perf_counter()
    python = peers.ensure_venv()
    venv_s = time.perf_counter() - t0
    n = videos_needed(plan)
    sample = generate(SampleDataConfig(out=str(args.work / f"sample-{n}"), videos=n, images=0, val_fraction=0.0))
    print(f"sample set: {n} videos ({sample.stats.made} made, {sample.stats.reused} reused)", flush=True)
    ray.init(num_cpus=plan.settings.processes, include_dashboard=False, configure_logging=False, log_to_driver=False)
    result: dict = {"benchmark": "ingest_webvid", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    modes, warmed = {}, set()
    with StaticServer(Path(sample.root)) as server, peers.PeerProcess(python, args.work / "peer.log") as peer:
        cases = make_cases(plan, sample, server.base_url, args.work)
        for mode in MODES:
            print(f"mode {mode.name}: {mode.title}", flush=True)
            modes[mode.name] = run_mode(mode, [c for c in cases if c.mode is mode], plan, peer, args.work, warmed)
        result["machine"] = machine({"video2dataset": peer.versions.get("video2dataset")})
        result["peer"] = {
            "package": peers.PACKAGE,
            "resolved_as_of": peers.RESOLVED_AS_OF,
            "install": peers.INSTALL,
            "versions": peer.versions,
            "runtime_patch": peer.patch,
            "patch_used_by": ["b"],
        }
    ray.shutdown()
    result["plan"] = {**asdict(plan), "quick": args.quick}
    result["inputs"] = describe_inputs(sample, cases)
    result["modes"] = modes
    result["peer_venv_s"] = round(venv_s, 1)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ingest_webvid.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
