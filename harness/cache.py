"""Where trained artifacts (models, draft heads) are cached: ``$HARNESS_CACHE``, else the user cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "posttrain-harness"))
