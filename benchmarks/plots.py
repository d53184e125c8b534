"""PNG plots (matplotlib, no display) of each section's results JSON, saved beside it.

`draw(name, result, out_dir)` dispatches on the section name; a section without a plotter draws
nothing. Colours are fixed per tool so every figure reads the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from benchmarks.report import LIMIT_NAMES, MODE_LIMITS, TOOL_NAMES

COLOURS = {"ours": "#1f77b4", "peer": "#ff7f0e", "limit": "#7f7f7f"}
DPI = 110


def _rates(series: dict) -> tuple[list[int], list[float], list[float], list[float]]:
    """Sizes, median videos/s, and the distance to the slowest / fastest run (for error bars)."""
    sizes = sorted(int(n) for n in series)
    med, low, high = [], [], []
    for n in sizes:
        s = series[str(n)]
        rates = [n / x for x in s["seconds"]]
        med.append(s["videos_per_s"])
        low.append(max(0.0, s["videos_per_s"] - min(rates)))
        high.append(max(0.0, max(rates) - s["videos_per_s"]))
    return sizes, med, low, high


def ingest_webvid_scaling(result: dict, out: Path) -> Path:
    """videos/s against the number of videos, one panel per mode, one line per tool."""
    modes = result["modes"]
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.8), squeeze=False)
    for ax, (name, mode) in zip(axes[0], modes.items(), strict=True):
        for tool, series in mode["series"].items():
            label = LIMIT_NAMES[MODE_LIMITS[name]] if tool == "limit" else TOOL_NAMES[tool]
            sizes, med, low, high = _rates(series)
            ax.errorbar(
                sizes,
                med,
                yerr=[low, high],
                marker="o",
                capsize=3,
                color=COLOURS[tool],
                label=label,
                linestyle="--" if tool == "limit" else "-",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])  # the sizes measured, written out
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labels even within one decade
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"mode {name}: {mode['title']}", fontsize=8.5, wrap=True)
        ax.set_xlabel("videos per job")
        ax.set_ylabel("videos/s (median; bars: min-max of runs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"WebVid ingestion, {result['plan']['settings']['processes']} processes "
        f"({result['machine']['cpu']}, {result['machine']['cores']} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    path = out / "ingest_webvid_scaling.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def ingest_webvid_ratios(result: dict, out: Path) -> Path:
    """Bars of ours / video2dataset and ours / limit for every mode and size."""
    groups, peer, limit = [], [], []
    for name, mode in result["modes"].items():
        for n, r in mode["ratios"].items():
            groups.append(f"{name}\n{n} videos")
            peer.append(r.get("ours_over_peer"))
            limit.append(r["ours_over_limit"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups)), 3.8))
    x = range(len(groups))
    width = 0.38
    bars = ax.bar(
        [i - width / 2 for i in x],
        [v or 0 for v in peer],
        width,
        color=COLOURS["peer"],
        label="ours / video2dataset (>1: ours faster)",
    )
    ax.bar_label(bars, labels=[f"{v:.2f}" if v else "n/a" for v in peer], fontsize=7)
    bars = ax.bar(
        [i + width / 2 for i in x],
        limit,
        width,
        color=COLOURS["limit"],
        label="ours / plain ffmpeg limit (1 = no overhead)",
    )
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in limit], fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(list(x), groups, fontsize=8)
    ax.set_ylabel("ratio of videos/s (medians)")
    ax.set_title("WebVid ingestion: ours against video2dataset and against the limit", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "ingest_webvid_ratios.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _save(fig, out: Path, name: str) -> Path:
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def features(result: dict, out: Path) -> Path:
    """frames/s of the job (wall), the job's actor, and the bare forward, per encoder size."""
    sizes = list(result["sizes"])
    bars = {"job (wall)": [r["pipeline"]["frames_per_s_wall"] for r in result["sizes"].values()],
            "actor (steady state)": [r["pipeline"]["frames_per_s_actor"] for r in result["sizes"].values()],
            "bare forward (limit)": [r["bare_forward"]["frames_per_s"] for r in result["sizes"].values()]}  # fmt: skip
    colours = [COLOURS["ours"], "#aec7e8", COLOURS["limit"]]
    fig, ax = plt.subplots(figsize=(max(4.5, 2.2 * len(sizes)), 3.6))
    width = 0.8 / len(bars)
    for k, ((label, values), colour) in enumerate(zip(bars.items(), colours, strict=True)):
        drawn = ax.bar([i + (k - 1) * width for i in range(len(sizes))], values, width, label=label, color=colour)
        ax.bar_label(drawn, labels=[f"{v:.1f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(sizes)), [f"{s} encoders" for s in sizes])
    ax.set_ylabel("frames/s (median)")
    ax.set_title("Feature extraction against the bare encoder forward", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out, "features.png")


def train_step(result: dict, out: Path) -> Path:
    """Seconds per step of each arm, split into data wait, frozen encoders and the trainable part."""
    arms = {"cached features": result["cached"], "on the fly": result["on_the_fly"]}
    parts = {"data wait": [], "frozen encoders": [], "trainable part (fwd + bwd + AdamW)": []}
    for arm in arms.values():
        wait = arm["step_s"] * arm["data_wait_share"]
        encode = arm.get("encode_s", 0.0)
        for label, value in zip(parts, (wait, encode, arm["step_s"] - wait - encode), strict=True):
            parts[label].append(max(value, 0.0))
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    bottom = [0.0] * len(arms)
    for (label, values), colour in zip(parts.items(), ["#d62728", COLOURS["peer"], COLOURS["ours"]], strict=True):
        ax.barh(list(arms), values, left=bottom, label=label, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, total in enumerate(bottom):
        ax.text(total, i, f" {total:.2f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds per step (medians)")
    ax.set_title(f"Training step, batch {result['settings']['batch']} clips x 8 frames", fontsize=10)
    ax.set_xlim(0, max(bottom) * 1.25)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return _save(fig, out, "train_step.png")


PLOTTERS: dict[str, list[Callable[[dict, Path], Path]]] = {
    "ingest_webvid": [ingest_webvid_scaling, ingest_webvid_ratios],
    "features": [features],
    "train_step": [train_step],
}


def draw(name: str, result: dict, out: Path) -> list[Path]:
    return [plot(result, out) for plot in PLOTTERS.get(name, [])]
