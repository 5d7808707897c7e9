"""Where the library keeps what it may rebuild: dequantized GGUF models, spilled weights and run
records. SPAP_CACHE_DIR moves it; the default is ~/.cache/spap_explorer.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (not created here: each user makes the part it writes)."""
    return Path(os.environ.get("SPAP_CACHE_DIR", Path.home() / ".cache" / "spap_explorer"))
