"""The decorator every stage `...Config` uses: frozen, typed, unknown keys rejected.

pydantic validates types at construction (so a config built in code is checked exactly like
one loaded from YAML), runs `__post_init__` for cross-field checks, and refuses unknown keys.
Loading YAML files and `key=value` overrides lives in `orchestration.config`.
"""

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

config_dataclass = dataclass(frozen=True, config=ConfigDict(extra="forbid"))
