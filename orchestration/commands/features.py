"""`vllama features extract|ls|show|verify|gc|demo-weights`: the frozen-feature store."""

from __future__ import annotations

import argparse
import json
import sys

from orchestration.commands import add_config_args
from orchestration.config import load_config

DESCRIPTION = """\
Precompute what is frozen in Video-LLaMA once, so training never decodes a video or runs a frozen
encoder: per sample, the image Q-Former outputs vl.npy [V, T, 32, H], ImageBind vision ibv.npy
[V, T, D] and audio iba.npy [8, D] (when the media has sound), fp16, with the caption and metadata
(conversations included) carried over.

A store is ROOT/FINGERPRINT/: the fingerprint hashes the encoders, their weights' sha256, the
preprocessing (frames, sampling, V views, crop) and the format version, so a matching store is reused
and any change makes a new one. Feature shards mirror the media shards one to one (same numbers and
keys), each with a NNNNN_stats.json marker written last; manifest.json records identity, dims,
dtypes and lineage. Training runs register in refs/ so gc keeps what they read."""

EXTRACT_DESCRIPTION = """\
A Ray Data job (on the cluster named by RAY_ADDRESS, else a local Ray): one actor per `actors`, each
loading the encoders once (GPU when gpus_per_actor > 0, else CPU) and extracting one media shard per
call: ffmpeg decodes the chosen frames at 224x224 and the audio in a bounded pool working ahead of
the encoders, forwards run on batches of batch_frames frames. Only media shards that are new or
changed since their feature shard was written are computed: a re-run of the same config computes
nothing. A sample that fails to decode is recorded in its shard's marker with the reason; a media
shard that cannot be read is reported by name and the others go on.

Exit status: 0 when every media shard has its feature shard, 1 when some shard failed (re-run to
retry) or a media shard's tar is missing, 2 for bad config or input."""

EXTRACT_EPILOG = """\
examples:
  vllama features demo-weights demo-output/encoders-tiny
  vllama features extract --config configs/features/tiny.yaml
  vllama features extract --config configs/features/7b.yaml root=s3://bucket/features actors=16
  vllama features extract --config configs/features/tiny.yaml preprocess.views=4 preprocess.sampling=headtail \\
      preprocess.crop=true
keys: sources (dataset: media folder), root, actors, gpus_per_actor, cpus_per_actor, batch_frames,
decode_workers, prefetch, timeout_s, spool_dir, progress, encoders.* (weights, image, imagebind,
dtype, cache_dir), preprocess.* (num_frames, sampling, views, crop, crop_scale, seed, audio),
storage.* (endpoint_url, region, profile, anon)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "features",
        help="precompute frozen ViT/Q-Former/ImageBind features into a fingerprinted store (Ray Data)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = actions.add_parser(
        "extract",
        help="media shards -> feature shards, computing only what is new or changed",
        description=EXTRACT_DESCRIPTION,
        epilog=EXTRACT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ex, "features", "configs/features/tiny.yaml")
    ex.set_defaults(func=run_extract)

    ls = actions.add_parser("ls", help="list the stores under ROOT with sizes, lineage and referencing runs")
    ls.add_argument("root", metavar="ROOT", help="the folder or s3:// prefix the stores live under (config `root`)")
    ls.set_defaults(func=run_ls)

    show = actions.add_parser("show", help="one store: identity, dims, datasets with their sources, runs, refs")
    show.add_argument("store", metavar="STORE", help="the store, ROOT/FINGERPRINT (local or s3://)")
    show.add_argument("--json", action="store_true", help="print the whole manifest as JSON instead")
    show.set_defaults(func=run_show)

    verify = actions.add_parser(
        "verify", help="read every shard back: checksums, sizes, members, shapes and dtypes against the manifest"
    )
    verify.add_argument("store", metavar="STORE", help="the store, ROOT/FINGERPRINT (local or s3://)")
    verify.set_defaults(func=run_verify)

    gc = actions.add_parser("gc", help="remove the stores under ROOT that no training run references")
    gc.add_argument("root", metavar="ROOT", help="the folder or s3:// prefix the stores live under")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument(
        "--min-age-hours",
        type=float,
        default=0.0,
        help="keep stores updated more recently than this (an extraction may be filling them); default 0",
    )
    gc.set_defaults(func=run_gc)

    demo = actions.add_parser(
        "demo-weights", help="write tiny random encoder checkpoints under the released file names (demo, tests)"
    )
    demo.add_argument("out", metavar="DIR", help="folder to write the three .pth files into")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random values (default 0)")
    demo.set_defaults(func=run_demo_weights)


def run_extract(args: argparse.Namespace) -> int:
    from pipelines.features import extract  # Ray and torch load only when the command runs

    cfg = load_config(extract.FeatureExtractConfig, args.config, args.overrides)
    try:
        summary = extract.run(cfg)
    except (ValueError, FileNotFoundError) as e:  # missing weights or media shards, a bad dataset name...
        print(f"vllama features extract: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    print(f"  store: {summary.store}")
    return 1 if summary.shards_failed or summary.sources_missing else 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def run_ls(args: argparse.Namespace) -> int:
    from pipelines.features import manage

    found = manage.stores(args.root)
    if not found:
        print(f"no feature stores under {args.root}")
        return 0
    print(f"{'FINGERPRINT':<17} {'UPDATED':<21} {'SIZE':>9} {'SAMPLES':>8}  {'REFS':<5} DATASETS (shards <- source)")
    for s in found:
        m = s.manifest or {}
        sets = ", ".join(f"{n} ({len(d.get('shards', {}))} <- {d.get('source', '?')})" for n, d in s.datasets.items())
        print(f"{s.fingerprint:<17} {m.get('updated', 'no manifest'):<21} {_size(s.tar_bytes):>9} {s.samples:>8}  "
              f"{len(s.refs):<5} {sets or '-'}")  # fmt: skip
    return 0


def run_show(args: argparse.Namespace) -> int:
    from pipelines.features import format as fmt
    from pipelines.features import manage

    try:
        m = fmt.read_manifest(args.store)
    except FileNotFoundError as e:
        print(f"vllama features show: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(m, indent=1))
        return 0
    enc, pre, dims = m["encoders"], m["preprocess"], m["dims"]
    print(f"store {args.store}\n  fingerprint {m['fingerprint']}, code {m.get('code_version')}, "
          f"created {m.get('created')}, updated {m.get('updated')}")  # fmt: skip
    print(f"  encoders: {enc['image']} + ImageBind {enc['imagebind']} at {enc['dtype']}, weights {enc['weights']}")
    for name, sha in sorted(enc["weights_sha256"].items()):
        print(f"    {name}  sha256 {sha}")
    print(f"  preprocess: {json.dumps(pre, sort_keys=True)}")
    print(f"  arrays (fp16): vl {dims['vl']}, ibv {dims['ibv']}, iba {dims['iba']}")
    for name, d in sorted(m.get("datasets", {}).items()):
        print(f"  {name}: {len(d['shards'])} shards, {d['samples']} samples ({d['failed']} failed), "
              f"{_size(d['tar_bytes'])} <- {d['source']}")  # fmt: skip
    for r in m.get("runs", [])[-5:]:
        print(f"  run {r['run_id']}: {r['shards_computed']} shards computed, {r['frames_per_s']} frames/s, "
              f"encoders busy {100 * r['encoder_busy']:.0f}%")  # fmt: skip
    print(f"  referenced by: {', '.join(manage.refs(args.store)) or 'no training run (gc would remove it)'}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from pipelines.features import manage

    report = manage.verify(args.store)
    for shard, problems in sorted(report.problems.items()):
        print(f"{shard}: " + "\n    ".join(problems))
    status = "OK" if report.ok else f"{len(report.problems)} shard(s) with problems"
    print(f"verified {report.shards} shards, {report.samples} samples, {_size(report.bytes)} in {args.store}: {status}")
    return 0 if report.ok else 1


def run_gc(args: argparse.Namespace) -> int:
    from pipelines.features import manage

    doomed = manage.gc(args.root, dry_run=args.dry_run, min_age_s=args.min_age_hours * 3600)
    verb = "would remove" if args.dry_run else "removed"
    for s in doomed:
        print(f"{verb} {s.uri} ({_size(s.tar_bytes)}, {s.samples} samples, no refs)")
    print(f"{verb} {len(doomed)} store(s) under {args.root}")
    return 0


def run_demo_weights(args: argparse.Namespace) -> int:
    from model.frozen_encoders import save_random_checkpoints

    paths = save_random_checkpoints(args.out, "tiny", "tiny", args.seed)
    for p in (paths.eva_vit, paths.blip2, paths.imagebind):
        print(f"wrote {p}")
    print("random values in the released layouts: use with encoders.image=tiny encoders.imagebind=tiny")
    return 0
