"""A DeepSpeed op build killed midway leaves torch's lock file behind; the driver says so."""

from __future__ import annotations

import logging
import os
import time

from orchestration.train import warn_stale_build_lock


def test_a_stale_build_lock_is_reported_with_its_path(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    with caplog.at_level(logging.WARNING, logger="orchestration.train"):
        warn_stale_build_lock()
        assert not caplog.records  # a fresh lock is a build in progress
        old = time.time() - 3600
        os.utime(lock, (old, old))
        warn_stale_build_lock()
    assert len(caplog.records) == 1
    assert str(lock) in caplog.text and "60 minutes old" in caplog.text and "delete it" in caplog.text
