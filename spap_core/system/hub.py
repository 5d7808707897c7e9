"""Fast reachability check for the Hugging Face hub, so nothing hangs on a closed network."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

from spap_core.errors import SourceUnavailableError

_REACHABILITY_TTL_S = 60.0
_last_check: tuple[float, str | None] | None = None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_unreachable_reason(timeout_s: float = 4.0) -> str | None:
    """None when the hub answers, else a one-line reason. Cached for a minute (UI calls it often)."""
    global _last_check
    now = time.monotonic()
    if _last_check is not None and now - _last_check[0] < _REACHABILITY_TTL_S:
        return _last_check[1]
    reason: str | None = None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            request = urllib.request.Request(f"{hub_endpoint()}/api/models?limit=1", method="HEAD")
            urllib.request.urlopen(request, timeout=timeout_s).close()
        except urllib.error.HTTPError:
            reason = None  # the server answered: it is reachable
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = f"{hub_endpoint()} did not answer within {timeout_s:.0f} s ({exc})"
    _last_check = (now, reason)
    return reason


def require_hub(what: str) -> None:
    """Raise a clear SourceUnavailableError instead of letting a download hang or retry."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise SourceUnavailableError(
            f"Cannot fetch {what}: the Hugging Face hub is unreachable ({reason}). "
            "Use a local model directory, a .gguf file or the built-in 'smollm2' model, "
            "and a local text file for data."
        )
