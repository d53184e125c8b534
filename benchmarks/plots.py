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


PLOTTERS: dict[str, list[Callable[[dict, Path], Path]]] = {
    "ingest_webvid": [ingest_webvid_scaling, ingest_webvid_ratios],
}


def draw(name: str, result: dict, out: Path) -> list[Path]:
    return [plot(result, out) for plot in PLOTTERS.get(name, [])]
