"""The recovery's training loop: AdamW on LoRA adapters of the pruned model, seeded, on the device the
model runs on (CUDA when the run has it), each step a batch of calibration windows with the
next-token loss, the distillation loss or both (RecoverySettings.mode). Each step is reported
(`on_step`: its loss, the held-out perplexity every `heldout_every` steps and after the last, the
seconds since the start), so a page can draw the loss as it falls; `cancel` stops it at the next
step, and a cancelled recovery drops its adapters, leaving the pruned model bit for bit as it was
(RecoveryCancelled, which the run API catches to keep that model).

The model stays in eval mode while it trains: no dropout (the adapters' dropout is 0 too), so a
step's loss depends on the seed and the data alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spap_core.errors import NumericalError, PruningCancelled, SpapInputError
from spap_core.evaluation.intervals import perplexity_of
from spap_core.models.adapters import ModelAdapter
from spap_core.models.offload import execution_device, is_dispatched
from spap_core.recovery.distill import DenseLogits, distillation_loss
from spap_core.recovery.lora import lora_adapters, merge_adapters
from spap_core.recovery.settings import RecoverySettings

# The held-out perplexity measured during a recovery: the first evaluation windows, never trained on.
# Four windows cost four forward passes every `heldout_every` steps, a fraction of the steps' own
# (each a forward and a backward pass over `batch` windows); the final perplexity is the whole
# evaluation's.
HELDOUT_WINDOWS = 4


class RecoveryCancelled(PruningCancelled):
    """A recovery stopped by its cancel after `steps_done` of its steps: its adapters are dropped and
    the pruned model is bit for bit as it was before it, so a caller may keep that model, where any
    other cancel leaves nothing worth keeping."""

    def __init__(self, settings: RecoverySettings, steps_done: int) -> None:
        super().__init__(f"Recovery cancelled after {steps_done} of {settings.steps} steps: its adapters were "
                         "dropped, and the pruned model is as it was before recovery.")
        self.settings = settings
        self.steps_done = steps_done

    def record(self) -> dict:
        """The run record's `recovery_cancelled` field: the settings, the steps done and the message."""
        return {"settings": asdict(self.settings), "steps_done": self.steps_done, "message": str(self)}


@dataclass(frozen=True)
class RecoveryStep:
    """One finished step: its number (1-based), its training loss, the held-out perplexity when
    measured after it (else None), the seconds since the recovery started and the steps asked."""

    step: int
    loss: float
    heldout_ppl: float | None
    elapsed: float
    steps: int


@dataclass
class RecoveryResult:
    """A finished recovery: its settings, the steps done, each step's loss, the held-out
    perplexities measured (step, perplexity) and how long it took."""

    settings: RecoverySettings
    steps: int
    losses: list[float] = field(default_factory=list)
    heldout: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def record(self) -> dict:
        """The run record's `recovery` field."""
        return {"settings": asdict(self.settings), "steps_done": self.steps, "final_loss": self.final_loss,
                "seconds": self.seconds, "losses": list(self.losses),
                "heldout_ppl": [[step, ppl] for step, ppl in self.heldout]}


def check_recoverable(model: nn.Module, settings: RecoverySettings, calibration_synthetic: bool) -> None:
    """Refuse, before any work, a recovery the run cannot do: one on a model placed with a device map
    (its offloaded weights are loaded for each forward call and cannot hold adapters or take
    gradients), or one without calibration text (check_calibration_text)."""
    check_calibration_text(settings, calibration_synthetic)
    if settings.enabled and is_dispatched(model):
        raise SpapInputError("Recovery trains adapters on the whole model, which an offloaded model (a device map, "
                             "--low-memory) cannot hold: load it without a device map, or drop --recover.")


def check_calibration_text(settings: RecoverySettings, calibration_synthetic: bool) -> None:
    """Refuse a recovery whose calibration text would be sampled from the model itself: it would
    teach the model nothing it does not already say (the CLI asks before the model loads)."""
    if settings.enabled and calibration_synthetic:
        raise SpapInputError("Recovery trains on the calibration text, and this run has none (it would be sampled "
                             "from the model itself): give a calibration text (--calib-file), or drop --recover.")


def recover(model: nn.Module, family: ModelAdapter, calibration: torch.Tensor, settings: RecoverySettings, *,
            seed: int, teacher: DenseLogits | None = None, heldout: torch.Tensor | None = None,
            on_step: Callable[[RecoveryStep], None] | None = None,
            cancel: threading.Event | None = None) -> RecoveryResult:
    """Train LoRA adapters of `model` on the calibration windows [N, L] for `settings.steps` steps,
    then merge them into its weights (in place). `teacher`: the dense model's logits on those
    windows (needed when the mode distils). `heldout`: windows whose perplexity is measured every
    `heldout_every` steps. Raises RecoveryCancelled, with the model as it was, when `cancel` is set."""
    if settings.distills and teacher is None:
        raise ValueError("a distilling recovery needs the dense model's logits")
    device = execution_device(model)
    started = time.perf_counter()
    result = RecoveryResult(settings=settings, steps=0)
    with lora_adapters(model, family, settings, seed) as wrapped:
        trainable = [parameter for parameter in wrapped.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.lr)
        for step, indices in enumerate(_batches(calibration.shape[0], settings, seed), start=1):
            if cancel is not None and cancel.is_set():
                raise RecoveryCancelled(settings, steps_done=step - 1)
            loss = _loss(model, calibration[indices].to(device), settings,
                         None if teacher is None else teacher.rows(indices, device))
            if not torch.isfinite(loss):
                raise NumericalError(f"Recovery step {step}'s loss is {loss.item()}: lower --recover-lr "
                                     f"(now {settings.lr:g}).")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.losses.append(loss.item())
            result.steps = step
            heldout_ppl = None
            if heldout is not None and (step % settings.heldout_every == 0 or step == settings.steps):
                heldout_ppl = _heldout_perplexity(model, heldout.to(device))
                result.heldout.append((step, heldout_ppl))
            if on_step is not None:
                on_step(RecoveryStep(step, result.losses[-1], heldout_ppl, time.perf_counter() - started,
                                     settings.steps))
        del optimizer, trainable
        merge_adapters(wrapped)
    result.seconds = time.perf_counter() - started
    return result


def _batches(windows: int, settings: RecoverySettings, seed: int) -> Iterator[torch.Tensor]:
    """`settings.steps` batches of `settings.batch` window indices: the windows in a seeded random
    order, a new order each pass over them; a pass's last windows, too few for a whole batch, sit
    that pass out (no batch takes a window twice; one wider than the windows takes each once)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    width = min(settings.batch, windows)
    for _ in range(settings.steps):
        if order.numel() < width:
            order = torch.randperm(windows, generator=generator)
        yield order[:width]
        order = order[width:]


def _loss(model: nn.Module, ids: torch.Tensor, settings: RecoverySettings,
          teacher: torch.Tensor | None) -> torch.Tensor:
    """The step's training loss: the next-token cross-entropy and the distillation KL, by the mode's weights."""
    logits = model(input_ids=ids, use_cache=False).logits
    loss = logits.new_zeros((), dtype=torch.float32)
    if settings.label_weight > 0:
        predicted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
        loss = loss + settings.label_weight * F.cross_entropy(predicted, ids[:, 1:].reshape(-1))
    if teacher is not None and settings.kl_weight > 0:
        loss = loss + settings.kl_weight * distillation_loss(logits, teacher, settings.temperature)
    return loss


def _heldout_perplexity(model: nn.Module, windows: torch.Tensor) -> float:
    """exp(mean next-token loss) over the held-out windows [W, L], one window per forward pass (the
    adapters in place, which spap_core.evaluation.perplexity, made for plain projections, refuses)."""
    total = 0.0
    with torch.no_grad():
        for window in windows.split(1):
            logits = model(input_ids=window, use_cache=False).logits[:, :-1].float()
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1)).item()
    return perplexity_of(total / windows.shape[0])
