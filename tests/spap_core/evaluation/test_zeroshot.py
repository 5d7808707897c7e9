"""Zero-shot accuracy through lm-eval-harness, offline: a task defined in a local YAML file over a
local JSONL file, evaluated on the tiny random Llama; the standard tasks refused at once without
the hub; unknown names refused before any model work; the CLI's record and the app's page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from app_harness import APP, SCRIPT_TIMEOUT_S, assert_clean, click, finish_job, titled
from cli_helpers import last_json_line, prune_args
from conftest import VOCAB_WORDS
from streamlit.testing.v1 import AppTest
from torch.utils.hooks import RemovableHandle

from spap_core.cli import main
from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.evaluation.zeroshot import STANDARD_TASKS, comparison_rows, parse_tasks, zeroshot_accuracy
from spap_core.system import hub
from spap_service.zeroshot import available_tasks, zeroshot_blocker

TASK = "tiny_choice"
EXAMPLES = 8
RIGHT, WRONG = "w7", "w8"  # every example's right answer, and a wrong answer every example offers
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
PAGE = "pages/zeroshot.py"


def write_task(folder: Path, task: str = TASK, dataset: str | None = None) -> Path:
    """A multiple-choice task over EXAMPLES questions of vocabulary words, the right answer (RIGHT)
    at a different place among three single-word answers each time."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task}.jsonl"
    with data.open("w") as file:
        for index in range(EXAMPLES):
            choices = [RIGHT, WRONG, "w9"]
            label = index % 3
            choices[0], choices[label] = choices[label], choices[0]
            question = " ".join(VOCAB_WORDS[(index * 7 + k) % 100 + 20] for k in range(6))
            file.write(json.dumps({"question": question, "choices": choices, "label": label}) + "\n")
    text = TASK_YAML.format(task=task, data=data)
    if dataset is not None:
        text = text.replace("dataset_path: json", f"dataset_path: {dataset}")
    (folder / f"{task}.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("zeroshot_tasks"))


def prefer(model: torch.nn.Module, word: str) -> RemovableHandle:
    """Make the model all but certain that the next token is `word` (a logit bias on its head)."""
    bias = torch.zeros(len(VOCAB_WORDS) + 3)
    bias[VOCAB_WORDS.index(word) + 3] = 50.0
    return model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)


def test_a_local_task_gives_accuracies_with_their_stderr_and_count(tiny, task_dir):
    scores = zeroshot_accuracy(tiny.model, tiny.tokenizer, [TASK], task_paths=[task_dir])
    task = scores[TASK]
    assert task["n"] == EXAMPLES
    for metric in ("acc", "acc_norm"):
        assert 0 <= task[metric] <= 1 and task[f"{metric}_stderr"] >= 0
    again = zeroshot_accuracy(tiny.model, tiny.tokenizer, [TASK], task_paths=[task_dir])
    assert again == scores  # the same model scores the same
    rows = comparison_rows(scores, again)
    assert {row["metric"] for row in rows} == {"acc", "acc_norm"} and all(row["change"] == 0 for row in rows)
    assert tiny.tokenizer.pad_token is None  # lm-eval set its pad token on a copy


def test_a_model_that_prefers_the_right_answer_scores_one_and_the_limit_counts(tiny, task_dir):
    handle = prefer(tiny.model, RIGHT)
    right = zeroshot_accuracy(tiny.model, tiny.tokenizer, [TASK], task_paths=[task_dir], limit=5)
    handle.remove()
    handle = prefer(tiny.model, WRONG)
    wrong = zeroshot_accuracy(tiny.model, tiny.tokenizer, [TASK], task_paths=[task_dir], limit=5)
    handle.remove()
    assert right[TASK]["acc"] == right[TASK]["acc_norm"] == 1.0 and right[TASK]["n"] == 5
    assert wrong[TASK]["acc"] == wrong[TASK]["acc_norm"] == 0.0


def test_standard_tasks_offline_are_refused_at_once_in_one_line(offline_hub, task_dir, tmp_path):
    assert parse_tasks("standard, piqa") == STANDARD_TASKS
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="hub, which is unreachable") as refused:
        zeroshot_accuracy(None, None, ["piqa"])  # refused before the model is touched
    assert "\n" not in str(refused.value) and time.monotonic() - started < 10
    hub_task = write_task(tmp_path / "hub_task", "hub_choice", dataset="someone/some_dataset")
    with pytest.raises(SourceUnavailableError, match="hub_choice"):
        zeroshot_accuracy(None, None, ["hub_choice", TASK], task_paths=[hub_task, task_dir])
    assert "unreachable" in zeroshot_blocker(["arc_easy"])
    assert zeroshot_blocker([TASK], str(task_dir)) is None
    assert available_tasks(str(task_dir)) == [*STANDARD_TASKS, TASK]


def test_unknown_tasks_and_bad_limits_are_refused_naming_the_known_ones(task_dir):
    with pytest.raises(SpapInputError, match=f"Unknown zero-shot task nope: .*arc_easy.*defines {TASK}"):
        zeroshot_accuracy(None, None, ["nope"], task_paths=[task_dir])
    with pytest.raises(SpapInputError, match="Unknown zero-shot tasks nope, arc_e: .*'standard'"):
        zeroshot_accuracy(None, None, ["nope", "arc_e"])
    with pytest.raises(SpapInputError, match="at least 1"):
        zeroshot_accuracy(None, None, [TASK], task_paths=[task_dir], limit=0)
    with pytest.raises(SpapInputError, match="not a folder"):
        zeroshot_accuracy(None, None, [TASK], task_paths=[task_dir / f"{TASK}.yaml"])
    with pytest.raises(SpapInputError, match="No zero-shot task"):
        parse_tasks(" , ")


def test_cli_records_dense_and_pruned_zero_shot_accuracy(tiny_dir, text_files, task_dir, capsys):
    assert main(prune_args(tiny_dir, text_files, "-K", "3", "--zeroshot", TASK, "--zeroshot-tasks-dir",
                           str(task_dir), "--zeroshot-limit", "4")) == 0
    out, err = capsys.readouterr()
    record = last_json_line(out)["zeroshot"]
    for model in ("dense", "pruned"):
        assert record[model][TASK]["n"] == 4 and 0 <= record[model][TASK]["acc"] <= 1
    assert f"{TASK:<16} acc" in err  # the table, on stderr


def test_cli_refuses_zero_shot_flags_before_loading_the_model(offline_hub, tiny_dir, text_files, capsys):
    for flags, message in [(["--zeroshot", "standard"], "unreachable"), (["--zeroshot", "nope"], "Unknown"),
                           (["--zeroshot", TASK, "--zeroshot-limit", "0"], "--zeroshot-limit must be at least 1"),
                           (["--zeroshot-limit", "4"], "apply to --zeroshot")]:
        assert main(prune_args(tiny_dir, text_files, *flags)) == 2
        err = capsys.readouterr().err
        assert message in err and "layers" not in err  # refused before any pruning progress


# ------------------------------------------------------------------------------------------ app


@pytest.fixture(scope="module")
def zeroshot_app(app_files) -> Path:
    """The app, with this module's tiny model and texts (app_files sets HF_HUB_OFFLINE, so the hub
    check says "unreachable" at once)."""
    hub._last_check = None
    return APP


def open_zeroshot(app: Path) -> AppTest:
    at = AppTest.from_file(str(app), default_timeout=SCRIPT_TIMEOUT_S)
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert_clean(at)
    return at


def test_page_without_a_run_says_offline_before_anything_is_pressed(zeroshot_app):
    at = open_zeroshot(zeroshot_app)
    assert at.title[0].value == "Zero-shot accuracy"
    assert any("hub, which is unreachable" in w.value for w in at.warning)
    assert any("No run yet" in i.value for i in at.info)
    assert at.multiselect[0].value == list(STANDARD_TASKS)


def test_page_evaluates_a_local_task_on_the_dense_and_the_pruned_model(zeroshot_app, task_dir):
    at = open_zeroshot(zeroshot_app)
    at.switch_page("pages/run_spap.py")
    at.run()
    at.slider(key="K").set_value(3)
    click(at, "Run SPAP")
    finish_job(at, "run")
    at.switch_page(PAGE)
    at.run()
    at.text_input(key="zeroshot_folder").set_value(str(task_dir))
    at.run()
    assert_clean(at)
    assert at.multiselect[0].value == [TASK] and not at.warning
    click(at, "Evaluate")
    finish_job(at, "zeroshot")
    figure = titled(at, "Zero-shot accuracy")
    assert {trace["name"] for trace in figure["data"]} == {"dense", "pruned"}
    table = at.dataframe[0].value
    assert list(table["metric"]) == ["acc", "acc_norm"] and list(table["n"]) == [EXAMPLES] * 2
