"""RecoverySettings checks itself against the one declaration its CLI flags, form widgets and share
links come from: every absurd value is refused in one line, and the share-link values round-trip."""

from __future__ import annotations

import math

import pytest

from spap_core.errors import SpapInputError
from spap_core.pipeline.parameters import GROUPS, RECOVERY_PARAMETERS, recovery_values, recovery_with_values
from spap_core.recovery.settings import DISTILL, LORA, LORA_DISTILL, NONE, RecoverySettings


@pytest.mark.parametrize("changes, named", [
    ({"steps": 0}, "recovery steps"), ({"steps": -1}, "recovery steps"), ({"steps": 10**9}, "recovery steps"),
    ({"steps": 2.5}, "whole number"), ({"rank": 0}, "LoRA rank"), ({"lr": math.nan}, "learning rate"),
    ({"lr": -1.0}, "learning rate"), ({"lr": math.inf}, "learning rate"), ({"batch": 0}, "windows per step"),
    ({"mode": "full"}, "recovery must be one of"), ({"temperature": 0.0}, "T must be"),
    ({"distill_weight": 1.5}, "distillation share"), ({"heldout_every": 0}, "held-out every"),
])
def test_every_absurd_value_is_refused_in_one_line(changes, named):
    with pytest.raises(SpapInputError, match=named) as refusal:
        RecoverySettings(**changes)
    assert "\n" not in str(refusal.value)


def test_the_mode_decides_which_losses_train_the_adapters():
    assert not RecoverySettings().enabled and RecoverySettings().describe() == "no recovery"
    assert (RecoverySettings(mode=LORA).label_weight, RecoverySettings(mode=LORA).kl_weight) == (1.0, 0.0)
    assert (RecoverySettings(mode=DISTILL).label_weight, RecoverySettings(mode=DISTILL).kl_weight) == (0.0, 1.0)
    mixed = RecoverySettings(mode=LORA_DISTILL, distill_weight=0.25)
    assert (mixed.label_weight, mixed.kl_weight) == (0.75, 0.25)
    assert RecoverySettings(mode=NONE).kl_weight == 0.0


def test_the_description_names_the_distillation_settings_only_when_it_distils():
    lora = RecoverySettings(mode=LORA, steps=50).describe()
    assert lora.startswith("lora recovery: recovery steps = 50") and " T = " not in lora
    assert "T = 2" in RecoverySettings(mode=DISTILL).describe()


def test_share_link_values_round_trip_and_are_checked_by_the_declaration():
    settings = RecoverySettings(mode=LORA_DISTILL, steps=30, rank=4, lr=3e-4, targets="mlp_channels")
    values = recovery_values(settings)
    assert set(values) == {p.key for p in RECOVERY_PARAMETERS}
    assert recovery_with_values({key: str(value) for key, value in values.items()}) == settings
    with pytest.raises(SpapInputError, match="recovery steps must be between 1 and 100000"):
        recovery_with_values({"recover_steps": "0"})
    with pytest.raises(SpapInputError, match="Unknown recovery setting"):
        recovery_with_values({"steps": 3})


def test_the_declarations_have_their_own_group_and_flags():
    assert GROUPS["recovery"] == "Recovery after pruning"
    assert {p.group for p in RECOVERY_PARAMETERS} == {"recovery"}
    assert RECOVERY_PARAMETERS[0].flags == ("--recover",)
    assert all(p.flags[0].startswith("--recover") for p in RECOVERY_PARAMETERS)
