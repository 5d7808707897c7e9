"""A run's settings and evaluation protocol in words, as Markdown that quotes every user-controlled
name through pages/_text.plain: the label of a result, the settings line, the evaluation budget."""

from __future__ import annotations

from pages._requests import reference_request
from pages._text import plain
from spap_core.pipeline.parameters import describe
from spap_service.analysis import run_label
from spap_service.data import DataSpec
from spap_service.runs import RunOutcome, RunRequest
from spap_service.uncertainty import perplexity_text


def result_label(outcome: RunOutcome) -> str:
    """'spap at 30% · K = 10, δ = 0.2': the run's method, sparsity and what differs from the defaults."""
    return run_label(outcome.request, reference_request())


def settings_summary(request: RunRequest, omit: frozenset[str] | set[str] = frozenset()) -> str:
    """One line with every setting of the request except the parameter keys in `omit` (Markdown:
    the text's name verbatim)."""
    parts = [describe(request.settings, omit)]
    if "nsamples" not in omit:
        parts.append(f"calibration {request.data.nsamples} × {request.data.seqlen} tokens of "
                     f"{plain(request.data.calibration.label)}")
    if "seed" not in omit:
        parts.append(f"seed {request.seed}")
    return ", ".join(part for part in parts if part)


def evaluation_budget(data: DataSpec) -> str:
    """The evaluation token budget as the charts state it (Markdown: the text's name verbatim)."""
    windows = "all windows" if data.eval_windows == 0 else f"{data.eval_windows} windows"
    return f"{windows} × {data.eval_len} tokens of {plain(data.evaluation.label)}"


def evaluation_caption(record: dict) -> str:
    """The protocol every perplexity is reported with (window length, windows, tokens, source), as
    Markdown: the record's fields that are not checked numbers (read_record) are shown verbatim."""
    return (f"Perplexity on {record['eval_windows']} windows × {record['eval_len']} tokens "
            f"({record['eval_tokens']:,} predicted tokens) of {plain(record['eval_source'])}; calibration "
            f"{plain(record['nsamples'])} × {plain(record['seqlen'])} tokens of {plain(record['calib_source'])}, "
            f"seed {plain(record['seed'])}.")


def perplexity_intervals(record: dict) -> str:
    """A run's dense and pruned perplexity with their 95% intervals over its evaluation windows (its own
    calibration seed's), the caption under the result's metrics (plain text: only numbers)."""
    return (f"95% intervals over the {record['eval_windows']} evaluation windows: dense "
            f"{perplexity_text(record['ppl_dense'], record.get('ppl_dense_ci95'))}, pruned "
            f"{perplexity_text(record['ppl'], record.get('ppl_ci95'))}.")
