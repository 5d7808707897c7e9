"""spap_core: structured pruning of GLU language models with SPAP and its baselines.

The library never imports streamlit: the app in ``pages/`` renders what this package returns.
"""

from spap_core.errors import PruningCancelled, SourceUnavailableError, SpapInputError

__all__ = ["PruningCancelled", "SourceUnavailableError", "SpapInputError"]
