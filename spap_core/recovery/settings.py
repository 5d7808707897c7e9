"""What a recovery is asked, declared once: the mode (which loss trains the adapters), the budget
(steps × windows per step), the adapters (rank, alpha, which projections), the step size, the
distillation's temperature and loss mix, and how often the held-out perplexity is measured. The
CLI's flags, the app's form widgets and share-link keys come from RECOVERY_PARAMETERS (collected in
spap_core.pipeline.parameters), and the dataclass checks itself against the same ranges, so a
library caller is refused exactly as the CLI is, before any work.

Tokens per step are counted in calibration windows (`batch` windows at the run's calibration
length), not in a separate length: the windows are already cut, tokenized and seeded by the run, a
step reuses them without cutting the text again, and the run's --seqlen stays the one length the
memory check (spap_core.pipeline.budget) reasons about."""

from __future__ import annotations

from dataclasses import dataclass

from spap_core.schema import Parameter

NONE, LORA, DISTILL, LORA_DISTILL = "none", "lora", "distill", "lora+distill"
MODES = (NONE, LORA, DISTILL, LORA_DISTILL)
# Which projections of each decoder layer receive adapters, named after the family adapter's parts
# they are found through (spap_core.models.adapters: `mlp_channels`, `attention_heads`)
MLP, ATTENTION, ALL = "mlp_channels", "attention_heads", "all"
TARGETS = (MLP, ATTENTION, ALL)


@dataclass(frozen=True)
class RecoverySettings:
    """One recovery after pruning. `mode`: none; lora (next-token loss on the calibration windows);
    distill (KL from the dense model's logits at `temperature`); lora+distill (both,
    `distill_weight` of the KL). Every mode trains LoRA adapters and merges them
    (docs/spap-design.md, Recovery after pruning, says why distillation trains adapters too)."""

    mode: str = NONE
    steps: int = 100
    batch: int = 4  # calibration windows per step
    rank: int = 8
    alpha: int = 16
    lr: float = 1e-4
    targets: str = ALL
    temperature: float = 2.0
    distill_weight: float = 0.5
    heldout_every: int = 10

    def __post_init__(self) -> None:
        for declared in RECOVERY_PARAMETERS:  # choices, whole numbers, the declared range; NaN and inf refused
            declared.coerce(declared.read(self))

    @property
    def enabled(self) -> bool:
        return self.mode != NONE

    @property
    def label_weight(self) -> float:
        """The next-token loss's share of the training loss."""
        return {NONE: 0.0, LORA: 1.0, DISTILL: 0.0, LORA_DISTILL: 1.0 - self.distill_weight}[self.mode]

    @property
    def kl_weight(self) -> float:
        """The distillation loss's share of the training loss."""
        return {NONE: 0.0, LORA: 0.0, DISTILL: 1.0, LORA_DISTILL: self.distill_weight}[self.mode]

    @property
    def distills(self) -> bool:
        return self.kl_weight > 0

    def describe(self) -> str:
        """'lora recovery: 100 steps × 4 windows, rank 8, …' (the declared phrases), or 'no recovery'."""
        if not self.enabled:
            return "no recovery"
        shown = [p.phrase(p.read(self)) for p in RECOVERY_PARAMETERS if p.key != RECOVERY_MODE
                 and (self.distills or p.key not in DISTILL_KEYS)]
        return f"{self.mode} recovery: " + ", ".join(shown)


_GROUP = "recovery"
RECOVERY_MODE = "recover"  # the key of the mode's parameter: the others only act with a mode other than none
RECOVERY_PARAMETERS: tuple[Parameter, ...] = (
    Parameter(RECOVERY_MODE, "recovery", "Recovery after pruning",
              "Train LoRA adapters on the calibration windows after pruning, then merge them: 'lora' with the "
              "next-token loss, 'distill' with the KL from the dense model's logits, 'lora+distill' with both.",
              str, _GROUP, ("--recover",), path="mode", choices=MODES),
    Parameter("recover_steps", "recovery steps", "Recovery steps", "AdamW steps of the recovery.",
              int, _GROUP, ("--recover-steps",), path="steps", low=1, high=100_000, step=1),
    Parameter("recover_batch", "windows per step", "Windows per recovery step",
              "Calibration windows per recovery step (each as long as the calibration's windows).",
              int, _GROUP, ("--recover-batch",), path="batch", low=1, high=256, step=1),
    Parameter("recover_rank", "LoRA rank", "LoRA rank", "Rank of every LoRA adapter.",
              int, _GROUP, ("--recover-rank",), path="rank", low=1, high=1024, step=1),
    Parameter("recover_alpha", "LoRA α", "LoRA alpha", "LoRA scaling numerator: adapters are scaled by α / rank.",
              int, _GROUP, ("--recover-alpha",), path="alpha", low=1, high=4096, step=1),
    Parameter("recover_lr", "learning rate", "Recovery learning rate", "AdamW's step size for the adapters.",
              float, _GROUP, ("--recover-lr",), path="lr", low=1e-7, high=1.0, step=1e-5, log_scale=True),
    Parameter("recover_targets", "adapted projections", "Projections with adapters",
              "Which projections of every decoder layer get adapters: the MLP's, the attention's, or both.",
              str, _GROUP, ("--recover-targets",), path="targets", choices=TARGETS),
    Parameter("recover_temperature", "T", "Distillation temperature",
              "Temperature of both models' softmax in the distillation loss (distill modes).",
              float, _GROUP, ("--recover-temperature",), path="temperature", low=0.1, high=100.0, step=0.1),
    Parameter("recover_distill_weight", "distillation share", "Distillation share (lora+distill)",
              "Share of the KL in lora+distill's loss; the next-token loss has the rest.",
              float, _GROUP, ("--recover-distill-weight",), path="distill_weight", low=0.0, high=1.0, step=0.05),
    Parameter("recover_heldout_every", "held-out every", "Held-out perplexity every … steps",
              "Measure the held-out perplexity every this many steps (and after the last).",
              int, _GROUP, ("--recover-heldout-every",), path="heldout_every", low=1, high=100_000, step=1),
)
DISTILL_KEYS = frozenset({"recover_temperature", "recover_distill_weight"})
