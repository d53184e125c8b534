"""What every jobs/train_*.py runs: `vllama train`, with the stage's 7b config when no --config is given."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the uploaded working dir

from orchestration.cli import main as vllama

REPO = Path(__file__).resolve().parent.parent


def default_config(stage: str) -> Path:
    return REPO / "configs" / "train" / f"{stage}_7b.yaml"


def run(default: Path, args: list[str]) -> int:
    if not any(a == "--config" or a.startswith("--config=") for a in args):
        args = ["--config", str(default), *args]
    return vllama(["train", *args])
