"""Zero-shot accuracy through lm-eval-harness (PyPI `lm-eval`), the harness the LLM-pruning
literature (LLM-Pruner, Wanda, SliceGPT, FLAP) reports its task accuracies with, so a pruned model's
numbers here can be set next to published ones.

The in-memory model is wrapped as it is (no reload, no copy), and every refusal the task names or the
network decide comes before any forward pass: the standard tasks download their datasets from the
Hugging Face hub, so an unreachable hub is one clear line at once rather than a hang in a download.
Tasks of one's own are lm-eval task YAML files in a local folder; those that read local data files
(dataset_path json, csv, parquet, text, arrow or a local folder) run offline.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spap_core.errors import PruningCancelled, SourceUnavailableError, SpapInputError
from spap_core.system.access import confined
from spap_core.system.hub import hub_unreachable_reason

# The common-sense suite of the pruning papers, as lm-eval names its tasks.
STANDARD_TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq")
STANDARD = "standard"  # the word that stands for STANDARD_TASKS in a task list
METRICS = ("acc", "acc_norm")  # accuracy; the same with each answer's log-likelihood per character
LOCAL_DATASET_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})
INSTALL_HINT = "pip install 'lm-eval>=0.4.13'"

TaskCallback = Callable[[int, int, str], None]  # (task number from 1, number of tasks, task name)


def parse_tasks(text: str) -> tuple[str, ...]:
    """A comma-separated task list as typed on the command line; 'standard' stands for
    STANDARD_TASKS. Order kept, repeats dropped, so each task is evaluated once."""
    names: list[str] = []
    for part in (piece.strip() for piece in text.split(",")):
        for name in STANDARD_TASKS if part == STANDARD else (part,) if part else ():
            if name not in names:
                names.append(name)
    if not names:
        raise SpapInputError(f"No zero-shot task given: name lm-eval tasks separated by commas, or '{STANDARD}' "
                             f"for {', '.join(STANDARD_TASKS)}.")
    return tuple(names)


def local_tasks(task_paths: Sequence[str | Path] | None) -> dict[str, dict]:
    """The tasks (with their configs) defined in these folders of lm-eval task YAML files, read by
    lm-eval's own index without its thousands of built-in tasks (a tenth of a second, not ten)."""
    folders = [_task_folder(path) for path in task_paths or ()]
    if not folders:
        return {}
    manager = _lm_eval("lm_eval.tasks").TaskManager(include_path=[str(folder) for folder in folders],
                                                    include_defaults=False)
    return {name: entry.cfg or {} for name, entry in manager.task_index.items()}


def check_tasks(tasks: Sequence[str], task_paths: Sequence[str | Path] | None = None) -> dict[str, dict]:
    """Refuse, before any model work, a task that is neither standard nor defined in `task_paths`
    (naming the known ones), and tasks whose data come from the hub while the hub is unreachable.
    Returns the local tasks' configs."""
    if not tasks:
        raise SpapInputError("No zero-shot task given.")
    local = local_tasks(task_paths)
    unknown = [name for name in tasks if name not in local and name not in STANDARD_TASKS]
    if unknown:
        raise SpapInputError(f"Unknown zero-shot {_tasks_named(unknown)}: {_known_tasks(local, task_paths)}")
    from_hub = [name for name in tasks if name not in local or _reads_hub(local[name])]
    reason = hub_unreachable_reason() if from_hub else None
    if reason is not None:
        raise SourceUnavailableError(
            f"Cannot run zero-shot {_tasks_named(from_hub)}: the data come from the Hugging Face hub, which is "
            f"unreachable ({reason}). Use lm-eval task YAML files in a local folder that read local data files.")
    return local


def zeroshot_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[str], *,
                      limit: int | None = None, batch_size: int = 4,
                      task_paths: Sequence[str | Path] | None = None, on_task: TaskCallback | None = None,
                      cancel: threading.Event | None = None) -> dict[str, dict]:
    """Zero-shot accuracy of `model` on each task: {task: {"acc", "acc_stderr", "acc_norm",
    "acc_norm_stderr", "n"}} (acc_norm where the task reports it; a stderr is None when lm-eval has
    none, as for one example). `limit` takes each task's first `limit` examples, for quick checks.
    Tasks run one at a time, so `on_task` can report progress and `cancel` can stop between them."""
    if limit is not None and limit < 1:
        raise SpapInputError(f"The zero-shot limit must be at least 1 example per task (got {limit}).")
    local = check_tasks(tasks, task_paths)
    lm_eval = _lm_eval()
    manager = _task_manager(tuple(str(_task_folder(path)) for path in task_paths or ()),
                            builtin=any(name not in local for name in tasks))
    with _quiet_lm_eval():
        # a copy: lm-eval sets a missing pad token on the tokenizer it is given
        harness = _lm_eval("lm_eval.models.huggingface").HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer),
                                                              batch_size=batch_size)
        results = {}
        for index, name in enumerate(tasks, start=1):
            if cancel is not None and cancel.is_set():
                raise PruningCancelled("zero-shot evaluation cancelled")
            if on_task is not None:
                on_task(index, len(tasks), name)
            # no global seeds: zero-shot multiple choice draws nothing at random, and the app's other
            # jobs share this process's generators
            evaluation = lm_eval.simple_evaluate(
                model=harness, tasks=[name], num_fewshot=0, limit=limit, task_manager=manager, log_samples=False,
                random_seed=None, numpy_random_seed=None, torch_random_seed=None)
            results[name] = _task_summary(evaluation, name)
    return results


def comparison_rows(dense: dict[str, dict], pruned: dict[str, dict]) -> list[dict]:
    """One row per (task, metric) present for both models: dense, pruned, change (pruned − dense,
    in accuracy points as fractions) and n; then the mean accuracy over the tasks, the number the
    pruning papers headline, when there are several."""
    rows = [{"task": task, "metric": metric, "dense": dense[task][metric], "pruned": pruned[task][metric],
             "change": pruned[task][metric] - dense[task][metric], "n": pruned[task]["n"]}
            for task in dense if task in pruned for metric in METRICS
            if metric in dense[task] and metric in pruned[task]]
    accuracies = [row for row in rows if row["metric"] == "acc"]
    if len(accuracies) > 1:
        means = {side: sum(row[side] for row in accuracies) / len(accuracies) for side in ("dense", "pruned")}
        rows.append({"task": "mean", "metric": "acc", **means, "change": means["pruned"] - means["dense"],
                     "n": sum(row["n"] for row in accuracies)})
    return rows


def format_comparison(rows: list[dict]) -> str:
    """The comparison as a small fixed-width table, accuracies in percent."""
    lines = [f"{'task':<16} {'metric':<9} {'dense':>7} {'pruned':>7} {'change':>7} {'n':>6}"]
    lines += [f"{row['task']:<16} {row['metric']:<9} {row['dense']:>7.1%} {row['pruned']:>7.1%} "
              f"{row['change']:>+7.1%} {row['n']:>6}" for row in rows]
    return "\n".join(lines)


def _tasks_named(names: Sequence[str]) -> str:
    return f"task{'s' if len(names) > 1 else ''} {', '.join(names)}"


def _known_tasks(local: dict[str, dict], task_paths: Sequence[str | Path] | None) -> str:
    """The sentence that names what can be asked for instead."""
    known = f"the standard tasks are {', '.join(STANDARD_TASKS)} ('{STANDARD}' for all of them)"
    if local:
        return f"{known}, and the task folder defines {', '.join(sorted(local))}."
    if task_paths:
        return f"{known}, and the task folder defines none that lm-eval could read (task YAML files, *.yaml)."
    return f"{known}; tasks of your own come from a folder of lm-eval task YAML files."


def _reads_hub(config: dict) -> bool:
    """Whether a task config downloads its dataset: a dataset_path that is neither one of the
    datasets library's file readers nor an existing local folder (an unset one is not judged)."""
    path = config.get("dataset_path")
    return isinstance(path, str) and path not in LOCAL_DATASET_BUILDERS and not Path(path).expanduser().exists()


def _task_folder(path: str | Path) -> Path:
    folder = confined(path, "zero-shot task folder")
    if not folder.is_dir():
        raise SpapInputError(f"The zero-shot task folder {str(path)[:80]} is not a folder.")
    return folder


def _task_summary(evaluation: dict, name: str) -> dict:
    """lm-eval's result for one task ('acc,none': …) as plain keys, with the examples evaluated."""
    scores = evaluation["results"][name]
    summary: dict[str, Any] = {}
    for metric in METRICS:
        if f"{metric},none" in scores:
            stderr = scores.get(f"{metric}_stderr,none")
            summary[metric] = float(scores[f"{metric},none"])
            summary[f"{metric}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else None
    summary["n"] = int(evaluation["n-samples"].get(name, {}).get("effective", scores.get("sample_len", 0)))
    return summary


def _task_manager(folders: tuple[str, ...], builtin: bool) -> Any:
    """lm-eval's task index: its built-in tasks (indexing them takes seconds, hence kept once per
    process) and/or the local folders (read afresh, so an edited YAML counts)."""
    if not folders:
        return _builtin_task_manager()
    return _lm_eval("lm_eval.tasks").TaskManager(include_path=list(folders), include_defaults=builtin)


@functools.lru_cache(maxsize=1)
def _builtin_task_manager() -> Any:
    return _lm_eval("lm_eval.tasks").TaskManager()


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval warns on every wrapped in-memory model and every limit; its progress bars stay."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _lm_eval(module: str = "lm_eval") -> Any:
    """A module of lm-eval, imported on first use: it takes seconds, and most runs never need it."""
    if importlib.util.find_spec("lm_eval") is None:
        raise SourceUnavailableError(f"Zero-shot accuracy needs lm-eval-harness: {INSTALL_HINT}")
    return importlib.import_module(module)
