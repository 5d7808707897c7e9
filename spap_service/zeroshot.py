"""Zero-shot accuracy of the loaded (dense) model and the latest run's pruned model on the same
lm-eval tasks, as the job queue runs it, and why it cannot run, said before anything is queued."""

from __future__ import annotations

import threading

import pandas as pd

from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.evaluation.zeroshot import STANDARD_TASKS, check_tasks, comparison_rows, local_tasks, zeroshot_accuracy
from spap_core.models.loading import LoadedModel
from spap_service.data import model_key
from spap_service.jobs import ProgressReporter
from spap_service.runs import RunOutcome

COLUMNS = ["task", "metric", "dense", "pruned", "change", "n"]


def task_folders(folder: str | None) -> list[str]:
    """The page's one optional task folder as the library's list of folders."""
    return [folder.strip()] if folder and folder.strip() else []


def available_tasks(folder: str | None) -> list[str]:
    """The standard tasks, then those a local folder defines (lm-eval's own reading of its YAML
    files); a folder that is not one is refused (SpapInputError)."""
    local = sorted(name for name in local_tasks(task_folders(folder)) if name not in STANDARD_TASKS)
    return [*STANDARD_TASKS, *local]


def zeroshot_blocker(tasks: list[str], folder: str | None = None) -> str | None:
    """Why these tasks cannot run here (an unreachable hub for the standard tasks, an unknown
    name, a folder that is not one), or None: checked at once, without loading anything."""
    try:
        check_tasks(tasks, task_folders(folder))
    except (SpapInputError, SourceUnavailableError) as exc:
        return str(exc)
    return None


def zeroshot_key(loaded: LoadedModel, outcome: RunOutcome, tasks: list[str], limit: int | None,
                 folder: str | None) -> str:
    """Identifies a comparison's table: the model, the run (by when it finished), tasks, limit, folder."""
    return f"zeroshot|{model_key(loaded)}|{outcome.finished_at}|{tasks}|{limit}|{task_folders(folder)}"


def compare_zeroshot(loaded: LoadedModel, outcome: RunOutcome, tasks: list[str], limit: int | None,
                     folder: str | None, progress: ProgressReporter, cancel: threading.Event) -> pd.DataFrame:
    """Zero-shot accuracy of the dense model, then of the run's pruned model, on the same tasks and
    examples: one row per task and metric (dense, pruned, change = pruned − dense, n examples),
    and the mean accuracy over the tasks. Offline, the standard tasks are refused at once with the
    reason (SourceUnavailableError), before either model is evaluated."""
    folders = task_folders(folder)
    check_tasks(tasks, folders)
    scores = {}
    for step, (which, model) in enumerate((("dense", loaded.model), ("pruned", outcome.pruned_model())), start=1):
        def on_task(index: int, total: int, name: str, which: str = which) -> None:
            progress.update(phase=f"zero-shot {name} ({which} model, task {index} of {total})")

        progress.update(step=step, n_steps=2)
        scores[which] = zeroshot_accuracy(model, loaded.tokenizer, tasks, limit=limit, task_paths=folders,
                                          batch_size=outcome.request.data.batch_size, on_task=on_task,
                                          cancel=cancel)
    return pd.DataFrame(comparison_rows(scores["dense"], scores["pruned"]), columns=COLUMNS)
