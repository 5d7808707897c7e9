"""What a run reports while it works. Every hook does nothing here; the CLI prints notes and
progress bars on stderr, the app's job updates its progress snapshot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from spap_core.methods.base import MethodStep
from spap_core.recovery.loop import RecoveryStep


class RunProgress:
    """The hooks of spap_core.runner.execute.run, in the order it calls them."""

    def note(self, text: str) -> None:
        """A change the run made to what was asked (a setting adapted to the model, the split of a
        parameter budget), in words."""

    def zeroshot_started(self, which: str, tasks: Sequence[str]) -> None:
        """The zero-shot tasks are about to run on the `which` ("dense" or "pruned") model."""

    def zeroshot_compared(self, dense: dict[str, dict], pruned: dict[str, dict]) -> None:
        """Both models' zero-shot accuracies, once the pruned model's are in."""

    @contextlib.contextmanager
    def experiment(self, windows: int) -> Iterator[None]:
        """Around the dense perplexity, the pruning and the pruned perplexity (over `windows`
        evaluation windows each); the callbacks below fire inside it."""
        yield

    def layer(self, done: int, total: int) -> None:
        """`done` of `total` decoder layers are pruned."""

    def step(self, step: MethodStep) -> None:
        """A method's step inside a layer (an iteration of SPAP's ρ schedule)."""

    def dense_batch(self, done: int, total: int) -> None:
        """`done` of `total` batches of the dense perplexity are evaluated."""

    def pruned_batch(self, done: int, total: int) -> None:
        """`done` of `total` batches of the pruned perplexity are evaluated (with a recovery: before
        it, then again from 1 after it)."""

    def recovery_step(self, step: RecoveryStep) -> None:
        """A step of the recovery after pruning is done: its loss, the held-out perplexity every
        few steps, the time so far and the steps asked."""
