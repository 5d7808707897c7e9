"""The run itself, in the order that makes every refusal come before heavy work: plan (a setting the
model cannot take, a run that does not fit, a recovery the model or the texts cannot have, refused
before any text is sampled or forward pass run), the token windows, the parameter budget's split,
the dense model's zero-shot accuracy (before an in-place walk changes the model), the experiment
(dense perplexity, pruning, pruned perplexity, and with a recovery the recovery and the perplexity
after it), the final model's zero-shot accuracy, then the save (a recovered model merged: plain
weights of the pruned shapes).

Cancelling (`cancel`) stops the run at its next layer or batch (PruningCancelled), except during the
recovery: the user asked to stop a run whose pruned model is already made and measured, so the
recovery stops, its adapters dropped, and the run ends with the pruned model as it was before it
(the record's `recovery_cancelled`), skips that model's zero-shot accuracy (a note says so), and
still saves it to `spec.output`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from spap_core.data.texts import SAMPLED_TEXT_TOKENS, calibration_windows, evaluation_windows, text_sampled_from_model
from spap_core.errors import SpapInputError
from spap_core.evaluation.zeroshot import zeroshot_accuracy
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import LoadedModel
from spap_core.models.shrink import save_pruned
from spap_core.pipeline.experiment import Experiment, plan_run, run_experiment
from spap_core.pipeline.split import BudgetSplit, budget_candidates, split_budget
from spap_core.pipeline.walk import PruneResult
from spap_core.recovery.loop import check_recoverable
from spap_core.runner.progress import RunProgress
from spap_core.runner.spec import MeasuredDense, RunData, RunOutput, RunSpec, RunTexts
from spap_core.storage.runs import staged_directory, write_run


@dataclass
class RunResult:
    """A finished run: the experiment, the data it ran on, the budget's split and the zero-shot
    accuracies (None where not asked), and why its output folder could not be saved (None when
    saved or not asked)."""

    loaded: LoadedModel
    spec: RunSpec
    experiment: Experiment
    data: RunData
    texts_given: bool  # the run resolved its own texts (RunTexts), so the calibration may be sampled
    dense: MeasuredDense | None
    split: BudgetSplit | None = None
    zeroshot: dict[str, dict[str, dict] | None] | None = None  # "pruned" None: skipped after a cancelled recovery
    save_error: str | None = None

    def record(self, **context: object) -> dict:
        """The JSON-able run record: the experiment's fields, the dense perplexity's timing when the
        caller measured it, where the data came from, `context`, then the budget and the
        zero-shot accuracies when the run had them. `calib_synthetic` (whether the calibration
        text was sampled from the model) is there when the run resolved its own texts, the only
        runs that can sample one."""
        spec, data = self.spec, self.data
        dense = {} if self.dense is None else {"dense_eval_seconds": self.dense.seconds,
                                               "dense_ppl_cached": self.dense.cached}
        sources: dict[str, object] = {"eval_source": data.evaluation_source.label,
                                      "calib_source": data.calibration_source.label}
        if self.texts_given:
            sources["calib_synthetic"] = data.calibration_source.synthetic
        record = self.experiment.record(self.loaded, **dense, **sources, nsamples=spec.nsamples, seqlen=spec.seqlen,
                                        seed=spec.seed, **context)
        if self.split is not None:
            split = self.split
            record["budget"] = {"param_sparsity": split.budget, "removed_of_layers": split.removed / split.total,
                                "summed_layer_errors": split.objectives, "description": split.describe()}
        if self.zeroshot is not None:
            record["zeroshot"] = self.zeroshot
        return record


def run(loaded: LoadedModel, spec: RunSpec, inputs: RunTexts | RunData, *, dense: MeasuredDense | None = None,
        progress: RunProgress | None = None, cancel: threading.Event | None = None) -> RunResult:
    """Prune `loaded` as `spec` asks, evaluate it and save it in `spec.output` when given.

    `inputs`: the texts (the windows are cut here, a missing text is sampled from the model) or
    the windows themselves. `dense`: the dense perplexity on those windows, when the caller has
    it; else it is measured. A failed save does not lose the run: its reason is the result's
    save_error. A cancel during the recovery ends the run with the unrecovered pruned model (the
    module's note); any other cancel raises PruningCancelled."""
    progress = progress or RunProgress()
    settings = spec.settings
    # every refusal that the model's config decides, before any text is sampled or forward pass run
    _, adjustments = _plan(loaded, spec, settings)
    if spec.recovery.enabled:
        check_recoverable(loaded.model, spec.recovery, calibration_synthetic=(
            inputs.calibration is None if isinstance(inputs, RunTexts) else inputs.calibration_source.synthetic))
    if spec.budget is not None:
        budget_candidates(loaded, spec.budget.share, spec.budget.head_sparsity)  # a budget the shapes cannot meet
    for note in adjustments:
        progress.note(note)
    data = inputs if isinstance(inputs, RunData) else _windows(loaded, spec, inputs)
    split = None
    if spec.budget is not None:
        split = split_budget(loaded, data.calibration, spec.budget.share, spec.budget.head_sparsity, spec.batch_size)
        settings = replace(settings, sparsity=split.sparsity, head_sparsity=split.head_sparsity)
        progress.note(split.describe())
        _plan(loaded, spec, settings)
    zeroshot_dense = _zeroshot(loaded, spec, "dense", progress, cancel) if spec.zeroshot is not None else None
    with progress.experiment(data.evaluation.shape[0]):
        experiment = run_experiment(
            loaded, data.calibration, data.evaluation, settings, seed=spec.seed, batch_size=spec.batch_size,
            dense=None if dense is None else dense.result, inplace=spec.inplace, on_layer=progress.layer,
            on_step=progress.step, on_dense_batch=progress.dense_batch, on_pruned_batch=progress.pruned_batch,
            cancel=cancel, recovery=spec.recovery, on_recovery_step=progress.recovery_step)
    result = RunResult(loaded=loaded, spec=spec, experiment=experiment, data=data,
                       texts_given=isinstance(inputs, RunTexts), dense=dense, split=split)
    if experiment.recovery_cancelled is not None:
        progress.note(str(experiment.recovery_cancelled))
    if zeroshot_dense is not None and experiment.recovery_cancelled is not None:
        progress.note("The pruned model's zero-shot accuracy was not measured: the run was asked to stop.")
        result.zeroshot = {"dense": zeroshot_dense, "pruned": None}
    elif zeroshot_dense is not None:
        zeroshot_pruned = _zeroshot(loaded, spec, "pruned", progress, cancel, experiment.result)
        result.zeroshot = {"dense": zeroshot_dense, "pruned": zeroshot_pruned}
        progress.zeroshot_compared(zeroshot_dense, zeroshot_pruned)
    if spec.output is not None:
        result.save_error = _save(spec.output, loaded.tokenizer, result.record(), experiment.result)
    return result


def _plan(loaded: LoadedModel, spec: RunSpec, settings: PruneSettings) -> tuple[PruneSettings, list[str]]:
    """plan_run at the spec's window sizes and calibration tokens, with the model copied unless the
    run is in place."""
    return plan_run(loaded, settings, (spec.seqlen, spec.eval_len), calibration_tokens=spec.nsamples * spec.seqlen,
                    batch_size=spec.batch_size, copies_model=not spec.inplace, recovery=spec.recovery)


def _windows(loaded: LoadedModel, spec: RunSpec, texts: RunTexts) -> RunData:
    """The token windows of the texts, each missing text sampled from the model first."""
    calibration = texts.calibration or text_sampled_from_model(loaded.model, loaded.tokenizer, SAMPLED_TEXT_TOKENS)
    evaluation = texts.evaluation or text_sampled_from_model(loaded.model, loaded.tokenizer, SAMPLED_TEXT_TOKENS)
    return RunData(calibration_source=calibration, evaluation_source=evaluation,
                   calibration=calibration_windows(loaded.tokenizer, calibration, spec.nsamples, spec.seqlen,
                                                   spec.seed),
                   evaluation=evaluation_windows(loaded.tokenizer, evaluation, spec.eval_len, spec.eval_windows))


def _zeroshot(loaded: LoadedModel, spec: RunSpec, which: str, progress: RunProgress,
              cancel: threading.Event | None, pruned: PruneResult | None = None) -> dict[str, dict]:
    """Zero-shot accuracy of the dense model, or of the `pruned` one, on the spec's tasks."""
    assert spec.zeroshot is not None  # called only for a run that asks for it
    request = spec.zeroshot
    model = loaded.model if pruned is None else pruned.model
    assert model is not None  # the model run_experiment has just pruned
    progress.zeroshot_started(which, request.tasks)
    return zeroshot_accuracy(model, loaded.tokenizer, request.tasks, limit=request.limit, batch_size=spec.batch_size,
                             task_paths=list(request.task_paths), cancel=cancel)


def _save(output: RunOutput, tokenizer: PreTrainedTokenizerBase, record: dict, result: PruneResult) -> str | None:
    """Save the pruned model and the run record in the output folder, whole or not at all (staged_directory),
    and return why it failed (None when saved), so the result that took the run to compute is
    still reported. Any exception counts: a full disk comes as safetensors' own error type, a
    model with per-layer widths as a refusal, not only as OSError."""
    try:
        if result.model is None:
            raise SpapInputError("the run holds no pruned model (a run read back from its folder keeps no weights)")
        with staged_directory(output.folder, replace=output.overwrite) as staging:
            save_pruned(result.model, tokenizer, staging)
            write_run(staging, record, result)
    except Exception as exc:  # reported to the user, with the result kept
        return " ".join(str(exc).split()) or type(exc).__name__
    return None
