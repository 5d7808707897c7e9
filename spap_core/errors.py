"""Exceptions whose message is meant for the user (CLI and app show it verbatim)."""


class SpapInputError(ValueError):
    """A request that cannot be honoured as given: the message says what to change."""


class SourceUnavailableError(RuntimeError):
    """A model or text source could not be reached (hub offline, missing package, missing file)."""


class PruningCancelled(RuntimeError):
    """Raised inside a pruning run when its cancel flag is set; the run's partial state is dropped."""


class NumericalError(ArithmeticError):
    """A run produced non-finite numbers; the message says at which layer (and ρ iteration) and
    what to change, and the run stops rather than return a silently wrong model."""


class UnreadableRunError(SpapInputError):
    """A saved run folder that cannot be shown: a file missing, corrupt, or holding values no run
    produces (a non-finite perplexity). The message names the file and the fault, in one line."""

    def __init__(self, file: object, fault: str) -> None:
        super().__init__(f"{file}: {fault}")
        self.file, self.fault = file, fault
