"""Ray actors for tests/spap_service/test_executors.py, in a module of their own so that Ray's workers can
import them (the local Ray's workers get this folder on their path). Each is PointWorker with its
model loaded and its progress as they are, but a point whose timing the test controls."""

from __future__ import annotations

import time

from spap_core.errors import PruningCancelled
from spap_core.recovery.loop import RecoveryStep
from spap_service.executors import PointResult, PointWorker
from spap_service.ray_pool import RayCancelFlag

GATE_S = 60.0  # how long a gated point waits before it gives up (a test that hangs would say so)


class GatedWorker(PointWorker):
    """A point (or a run) that reports one step of pruning, then waits for ray.cancel, checking
    the flag as spap_core does at each layer."""

    def measure(self, request) -> PointResult:
        return self._gated()

    def run(self, request, owner: str):
        return self._gated()

    def _gated(self):
        cancel, deadline = RayCancelFlag(), time.monotonic() + GATE_S
        with self._point() as progress:
            progress.update(phase="pruning (spap)", layer=2, n_layers=2, iteration=3, n_iterations=5,
                            recovery_steps=4, recovery=(RecoveryStep(1, 3.5, None, 0.25, 4),))
            while not cancel.is_set():
                if time.monotonic() > deadline:
                    return PointResult(error="the test never cancelled")
                time.sleep(0.05)
            raise PruningCancelled("stopped at the next layer")


class DeafWorker(PointWorker):
    """A point that never checks its cancel flag, like one stuck in a long layer."""

    def measure(self, request) -> PointResult:
        with self._point():
            time.sleep(GATE_S)
        return PointResult(error="the test never cancelled")
