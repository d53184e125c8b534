"""`vllama convert import|export SRC DST`: released Video-LLaMA checkpoints <-> our branch files.

    vllama convert import VL_LLaMA_2_7B_Finetuned.pth s3://ckpts/vl-7b.safetensors --size 7b
    vllama convert export s3://ckpts/vl-7b.safetensors exported.pth

SRC and DST are local paths, file:// or s3:// URIs (S3 endpoint and credentials from the
standard AWS environment, e.g. AWS_ENDPOINT_URL). Writes are atomic.
"""

from __future__ import annotations

import argparse
import io
import sys

from model.config import SIZES  # plain data; torch and transformers load only when the command runs
from pipelines import storage


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="import a released Video-LLaMA .pth into a vllama branch file, or export one back",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser(
        "import",
        help="released .pth (VL or AL, with or without the 'model' wrapper) -> vllama .safetensors",
        description="Check every key of a released checkpoint against the branches at --size (used, a known "
        "ignorable buffer, or an error naming it) and write our safetensors branch file.",
    )
    imp.add_argument("src", help="released checkpoint (.pth), local path or s3:// URI")
    imp.add_argument("dst", help="vllama branch file to write (.safetensors)")
    imp.add_argument("--size", required=True, choices=sorted(SIZES), help="model size the checkpoint was trained at")
    exp = actions.add_parser(
        "export",
        help="vllama .safetensors -> released .pth layout ({'model': state_dict})",
        description="Write our branch file in the released Video-LLaMA key layout, loadable by the original code.",
    )
    exp.add_argument("src", help="vllama branch file (.safetensors), local path or s3:// URI")
    exp.add_argument("dst", help="checkpoint to write (.pth)")
    exp.add_argument("--bare", action="store_true", help="write the bare state dict, without the 'model' wrapper")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError

    try:
        if args.action == "import":
            return _import(args.src, args.dst, args.size)
        return _export(args.src, args.dst, wrap=not args.bare)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"vllama convert {args.action}: {e}", file=sys.stderr)
        return 1


def _import(src: str, dst: str, size_name: str) -> int:
    from model.checkpoint import import_reference, read_torch_file, save_branches

    obj = read_torch_file(storage.read_bytes(src), src)
    state, report = import_reference(obj, SIZES[size_name], source=src)
    storage.write_bytes(dst, save_branches(state, SIZES[size_name]))
    print(report.summary())
    print(f"wrote {dst}")
    return 0


def _export(src: str, dst: str, wrap: bool) -> int:
    import torch

    from model.checkpoint import export_reference, load_branches

    state, size = load_branches(storage.read_bytes(src), src)
    buffer = io.BytesIO()
    torch.save(export_reference(state, size, wrap=wrap), buffer)
    storage.write_bytes(dst, buffer.getvalue())
    print(f"{src}: {len(state)} tensors, size {size.name} -> wrote {dst}")
    return 0
