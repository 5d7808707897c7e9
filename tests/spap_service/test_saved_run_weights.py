"""A saved run brings its pruned model back from the dense model it pruned, when its weights fit the
saved runs' cap and were not removed since to make room for newer runs; otherwise, and for runs saved
before weights were kept, it says why in words."""

import json
import threading
import time
from dataclasses import replace

import pytest
import torch
from conftest import tiny_llama

import spap_service.runs as runs
from spap_core.errors import SpapInputError
from spap_core.methods.registry import PruneSettings
from spap_core.storage.weights import WEIGHTS_FILE
from spap_service.jobs import ProgressReporter
from spap_service.limits import server_limits
from spap_service.run_index import RunCaps, indexed_runs
from spap_service.runs import RunRequest, load_saved_run, run_pruning

IDS = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def request_(saved_run_data) -> RunRequest:
    return RunRequest(PruneSettings(method="flap", sparsity=0.25), 0, saved_run_data)


def finished_run(tiny, request: RunRequest) -> runs.RunOutcome:
    return run_pruning(tiny, request, ProgressReporter(), threading.Event(), owner="me")


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_a_saved_run_brings_back_its_pruned_model_from_the_dense_one(tiny, request_):
    outcome = finished_run(tiny, request_)
    expected = logits(outcome.pruned_model())
    opened = load_saved_run(outcome.saved_to)
    assert not opened.has_model and opened.weights_missing is None  # kept, to be rebuilt from the dense model
    assert opened.dense.window_nll == outcome.dense.window_nll and opened.pruned.ci95 == outcome.pruned.ci95 is not None
    assert json.loads((outcome.saved_to / "results.json").read_text())["pruned_weights"]["file"] == WEIGHTS_FILE
    [indexed] = indexed_runs(outcome.saved_to.parent)[0]
    assert indexed.bytes >= (outcome.saved_to / WEIGHTS_FILE).stat().st_size  # the cap counts the weights

    opened.restore_model(tiny)
    assert opened.has_model and opened.tokenizer is tiny.tokenizer  # the downloads have a tokenizer too
    assert torch.equal(logits(opened.pruned_model()), expected)


def test_the_run_of_another_model_is_refused_and_stays_without_a_model(tiny, request_):
    outcome = finished_run(tiny, request_)
    opened = load_saved_run(outcome.saved_to)
    other = replace(tiny, model=tiny_llama(seed=1))
    with pytest.raises(SpapInputError, match="another model"):
        opened.restore_model(other)
    assert not opened.has_model


def test_weights_past_the_cap_are_not_kept_and_the_run_says_why(tiny, request_, monkeypatch):
    cap = 4096  # bytes: less than the run's arrays and weights together
    limits = replace(server_limits(), saved_runs=RunCaps(max_count=None, max_bytes=cap, per_session=None))
    monkeypatch.setattr(runs, "server_limits", lambda: limits)
    outcome = finished_run(tiny, request_)
    assert not (outcome.saved_to / WEIGHTS_FILE).exists() and outcome.stored_weights is None
    opened = load_saved_run(outcome.saved_to)
    assert opened.weights_missing is not None
    assert opened.weights_missing.startswith("This run was saved without its pruned weights (with them it would take")
    assert f"more than the {cap / 2**20:.0f} MB this server keeps for all saved runs" in opened.weights_missing


def test_a_run_saved_before_weights_were_kept_says_so(tiny, request_):
    outcome = finished_run(tiny, request_)
    record_file = outcome.saved_to / "results.json"
    record = json.loads(record_file.read_text())
    del record["pruned_weights"]
    record_file.write_text(json.dumps(record))
    (outcome.saved_to / WEIGHTS_FILE).unlink()
    opened = load_saved_run(outcome.saved_to)
    assert opened.weights_missing == ("This run was saved without its pruned weights (it was saved before saved runs "
                                      "kept their weights)")
    opened.restore_model(tiny)  # nothing to bring back: no error, still no model
    assert not opened.has_model


def test_a_run_whose_weights_made_room_for_a_newer_one_keeps_its_record_and_says_why(tiny, request_, monkeypatch):
    first = finished_run(tiny, request_)
    [indexed] = indexed_runs(first.saved_to.parent)[0]
    cap = 2 * indexed.bytes - indexed.weights_bytes // 2  # a second such run fits whole only if the first's weights go
    limits = replace(server_limits(), saved_runs=RunCaps(max_count=None, max_bytes=cap, per_session=None))
    monkeypatch.setattr(runs, "server_limits", lambda: limits)
    second = finished_run(tiny, request_)
    assert (second.saved_to / WEIGHTS_FILE).is_file() and not (first.saved_to / WEIGHTS_FILE).exists()

    opened = load_saved_run(first.saved_to)
    kept = [layer.keep.tolist() for layer in first.result.layers]
    assert [layer.keep.tolist() for layer in opened.result.layers] == kept  # what its charts draw is still there
    removed_at = opened.record["pruned_weights"]["removed_at"]
    assert opened.weights_missing == (f"This run's pruned weights were removed on "
                                      f"{time.strftime('%Y-%m-%d', time.localtime(removed_at))} to keep all saved runs "
                                      f"within the {cap / 2**20:.0f} MB this server allows; its record and charts are "
                                      "kept")
    assert load_saved_run(second.saved_to).weights_missing is None
