"""The benchmark runner (`make bench`): every section, then the plots and the tables in docs/PERFORMANCE.md.

    .venv/bin/python -m benchmarks.run                      # everything, into benchmarks/results/
    .venv/bin/python -m benchmarks.run --only ingest_webvid # one section (the others' results stay)
    .venv/bin/python -m benchmarks.run --report-only        # redraw plots and tables from the JSON
    .venv/bin/python -m benchmarks.run --quick              # tiny sizes into benchmarks/work/quick/

A section is a module run in its own process (its Ray, its memory) as

    python -m <module> [--quick] --results DIR --work DIR

that writes DIR/<name>.json with at least `machine` (benchmarks.common.machine()) and `date`.
Adding one is a line in SECTIONS, plus optional plot and table functions registered in
benchmarks/plots.py and benchmarks/report.py under the same name. A section whose module is not
in this checkout is reported as skipped, with the reason, instead of failing the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots, report
from benchmarks.common import REPO, RESULTS, WORK, load_1m

DOC = REPO / "docs" / "PERFORMANCE.md"
QUICK = WORK / "quick"  # --quick never writes over the committed results or the doc


@dataclass(frozen=True)
class Section:
    name: str  # results/<name>.json; the doc's <!-- results:<name> --> block; plot/table registry key
    module: str
    what: str
    missing: str = ""  # why the module may be absent (shown in the doc), for sections other branches bring
    cuda: bool = False  # runs only where torch sees a CUDA device; skipped, saying so, elsewhere


SECTIONS = (
    Section("ingest_webvid", "benchmarks.ingest_webvid", "WebVid ingestion: ours vs video2dataset vs plain ffmpeg"),
    Section("ingest_cc3m", "benchmarks.ingest_cc3m", "CC3M images: ours (img2dataset under Ray) vs img2dataset alone"),
    Section("features", "benchmarks.features", "Feature extraction: the job vs the bare encoder forward; reuse"),
    Section("train_step", "benchmarks.train_step", "Training step: cached features vs on-the-fly encoders"),
    Section("gpu", "benchmarks.gpu", "On a GPU: real-size encoders and the 7B training step, share of peak", cuda=True),
)


def run_section(section: Section, quick: bool, results: Path, work: Path) -> dict:
    """Run one section's module; its status, wall time and the load around it."""
    if importlib.util.find_spec(section.module) is None:
        return {"status": "skipped", "reason": section.missing or f"{section.module} not found"}
    if section.cuda and not cuda_available():
        return {"status": "skipped", "reason": "no CUDA device on this machine; run `make bench` on a GPU machine"}
    cmd = [sys.executable, "-m", section.module, "--results", str(results), "--work", str(work / section.name)]
    cmd += ["--quick"] if quick else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # Ray Data's per-dataset INFO lines, not the sections' own
    env["PYTHONUNBUFFERED"] = "1"  # progress lines appear as they happen
    print(f"== {section.name}: {section.what}\n   {' '.join(cmd)}", flush=True)
    load, t0 = load_1m(), time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    doc = {"status": "ok" if rc == 0 else "failed", "seconds": round(time.perf_counter() - t0, 1)}
    doc.update({"load_1m_before": load, "load_1m_after": load_1m()})
    if rc != 0:
        doc["reason"] = f"exit code {rc}; its output is above"
    print(f"   {section.name}: {doc['status']} in {doc['seconds']} s", flush=True)
    return doc


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def render(results: Path, doc: Path) -> list[Path]:
    """Plots from every section's JSON, then the doc's result blocks."""
    found = {
        s.name: json.loads((results / f"{s.name}.json").read_text())
        for s in SECTIONS
        if (results / f"{s.name}.json").exists()
    }
    images = [p for name, result in found.items() for p in plots.draw(name, result, results)]
    run = json.loads((results / "run.json").read_text()) if (results / "run.json").exists() else {}
    blocks = {}
    for s in SECTIONS:
        status = run.get("sections", {}).get(s.name)
        if importlib.util.find_spec(s.module) is None:  # not in this checkout, whatever an older run said
            status = {"status": "skipped", "reason": s.missing or f"{s.module} not found"}
        blocks[s.name] = report.block(s, found.get(s.name), status, results, doc)
    blocks["run"] = report.run_block(run)
    report.update_doc(doc, blocks)
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery, not performance")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SECTIONS], help="run these sections only")
    parser.add_argument("--report-only", action="store_true", help="no runs: redraw plots and tables from the JSON")
    parser.add_argument("--results", type=Path, help=f"default {RESULTS} ({QUICK}/results with --quick)")
    parser.add_argument("--doc", type=Path, help=f"default {DOC} ({QUICK}/PERFORMANCE.md with --quick)")
    parser.add_argument("--work", type=Path, help=f"scratch and cached inputs; default {WORK} ({QUICK} with --quick)")
    args = parser.parse_args(argv)
    results = args.results or (QUICK / "results" if args.quick else RESULTS)
    doc = args.doc or (QUICK / "PERFORMANCE.md" if args.quick else DOC)
    work = args.work or (QUICK if args.quick else WORK)
    results.mkdir(parents=True, exist_ok=True)
    if args.quick and not doc.exists():  # a quick run rewrites a copy of the real doc
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(DOC.read_text())

    failed = False
    if not args.report_only:
        t0 = time.perf_counter()
        run_path = results / "run.json"
        run = json.loads(run_path.read_text()) if run_path.exists() else {}
        run.update({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick})
        sections = run.setdefault("sections", {})
        for section in SECTIONS:
            if args.only is None or section.name in args.only:
                sections[section.name] = run_section(section, args.quick, results, work)
        run["total_s"] = round(time.perf_counter() - t0, 1)
        run["selected"] = args.only or [s.name for s in SECTIONS]
        run_path.write_text(json.dumps(run, indent=1) + "\n")
        failed = any(s["status"] == "failed" for s in sections.values())
    images = render(results, doc)
    print(f"results: {results}\nplots: {', '.join(p.name for p in images) or 'none'}\ndoc: {doc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
