"""The peer tools, each in its own virtual environment, and the process that runs their jobs.

video2dataset 1.3.0 (the last release) pins torch 2.1.2, transformers 4.37 and numpy < 2, which
cannot share our environment, so it gets `benchmarks/.peer-venv` (git-ignored), installed from
PyPI with uv. Its unpinned dependencies are resolved as of its release (`--exclude-newer`):
resolved as of today, pyarrow needs numpy >= 2 and the package does not import at all.

    python = ensure_venv()              # builds once; a stamp named after the spec skips rebuilds
    with PeerProcess(python) as peer:   # imports video2dataset once
        peer.run({...job...})           # one video2dataset(...) call; its seconds and shard stats

ffmpeg and ffprobe: video2dataset calls them by name, so the peer's PATH starts with the folder
of the binaries our pipeline uses (`pipelines.media.bin_dir()`): both sides run the same build.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO
from pipelines import media

PACKAGE = "video2dataset==1.3.0"
RESOLVED_AS_OF = "2024-03-01"  # video2dataset 1.3.0 was released in February 2024
INSTALL = f"uv pip install --exclude-newer {RESOLVED_AS_OF} {PACKAGE}, then compileall (bytecode, as pip writes)"
VENV = REPO / "benchmarks" / ".peer-venv"
SCRIPT = REPO / "benchmarks" / "peer_video2dataset.py"


class PeerError(RuntimeError):
    pass


def _stamp(venv: Path) -> Path:
    spec = f"{PACKAGE} exclude-newer={RESOLVED_AS_OF} python={sys.version_info[:2]} compileall"
    return venv / f".installed-{hashlib.sha1(spec.encode()).hexdigest()[:12]}"


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """The peer's interpreter, building its environment first if the stamp for this spec is missing."""
    python = venv / "bin" / "python"
    if _stamp(venv).exists() and python.exists():
        return python
    log(f"peer: building {venv} with {PACKAGE} (resolved as of {RESOLVED_AS_OF}); ~5 GB, 1-3 min")
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)  # not our venv's python: no --system-site leaks
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    steps = [
        [base, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "uv>=0.5,<1"],
        [str(venv / "bin" / "uv"), "pip", "install", "-q", "--python", str(python),
         "--exclude-newer", RESOLVED_AS_OF, PACKAGE],
        # Bytecode, as pip writes at install time (uv does not by default): without it, where
        # PYTHONDONTWRITEBYTECODE is set, every worker start compiles torch and transformers
        # from source (~30 s instead of ~8 s here), which would be charged to video2dataset.
        [str(python), "-m", "compileall", "-q", "-j", "0", str(site)],
    ]  # fmt: skip
    t0 = time.perf_counter()
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PeerError(
                f"building the peer environment failed at `{' '.join(cmd)}` (exit {proc.returncode}):\n"
                f"{(proc.stderr or proc.stdout)[-2000:]}\nIt needs PyPI and a Python 3.8-3.11 interpreter (torch "
                f"2.1.2 has no wheels for newer ones); delete {venv} and re-run to retry."
            )
    _stamp(venv).touch()
    log(f"peer: built in {time.perf_counter() - t0:.0f} s")
    return python


def peer_env() -> dict:
    """Our environment minus our venv, with our ffmpeg/ffprobe first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([media.bin_dir(), env.get("PATH", "")])
    for tool, ours in (("ffmpeg", media.ffmpeg_bin()), ("ffprobe", media.ffprobe_bin())):
        found = shutil.which(tool, path=env["PATH"])
        if found is None or Path(found).resolve() != Path(ours).resolve():
            raise PeerError(f"the peer would run {tool} from {found}, not ours ({ours}); check PATH")
    env["WANDB_MODE"] = "disabled"  # it imports wandb; nothing is logged anywhere
    return env


class PeerProcess:
    """benchmarks/peer_video2dataset.py in the peer's interpreter: JSON jobs in, JSON results out."""

    def __init__(self, python: Path, log_path: Path, timeout_s: float = 900.0):
        self.python, self.log_path, self.timeout_s = python, log_path, timeout_s
        self.versions: dict = {}
        self.patch: str | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> PeerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self._proc = subprocess.Popen(
            [str(self.python), str(SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=peer_env(),
            text=True,
            bufsize=1,
        )
        hello = self._reply()
        self.versions, self.patch = hello["versions"], hello["patch"]
        return self

    def run(self, job: dict) -> dict:
        """One video2dataset call; its result, or PeerError naming the log."""
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            raise PeerError(f"video2dataset failed: {reply['error']} (log: {self.log_path})")
        return reply

    def _reply(self) -> dict:
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.timeout_s):
                raise PeerError(f"the peer gave no answer in {self.timeout_s:.0f} s (log: {self.log_path})")
        line = self._proc.stdout.readline()
        if not line:
            raise PeerError(f"the peer exited with {self._proc.wait()} (log: {self.log_path}):\n{self._tail()}")
        return json.loads(line)

    def _tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
