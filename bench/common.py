"""What every benchmark shares: one model load, fixed token windows, settings overrides written
with the parameter keys of the CLI and the share link (`K=10,bias=false`), the run API of
the CLI and the app, and a Markdown header that records machine and protocol."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from spap_core.data.texts import (
    DATA_DIR_ENV,
    TextSource,
    calibration_windows,
    evaluation_windows,
    resolve_text,
    text_from_file,
)
from spap_core.errors import SourceUnavailableError, SpapInputError
from spap_core.evaluation.intervals import perplexity_of
from spap_core.evaluation.perplexity import PerplexityResult, perplexity
from spap_core.methods.altmin import AltMinSettings, adam_step_dtype
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import LoadedModel, load_model
from spap_core.pipeline.parameters import with_values
from spap_core.recovery.settings import RecoverySettings
from spap_core.runner.execute import RunResult, run
from spap_core.runner.spec import MeasuredDense, ParameterBudget, RunData, RunSpec

# Shakespeare is the out-of-domain text; it has no library default, so it is read from the data folder.
SHAKESPEARE_FILE = Path(os.environ.get(DATA_DIR_ENV, Path(__file__).resolve().parents[2] / "shared" / "data"),
                        "tinyshakespeare", "input.txt")


def calibration_text() -> TextSource:
    """The calibration text every benchmark uses: the library's default (spap_core.data.texts), the one
    the CLI and the app use too."""
    return resolve_text(None, "calibration")


def evaluation_text(name: str) -> TextSource:
    return resolve_text(None, "evaluation") if name == "wikitext2" else text_from_file(SHAKESPEARE_FILE)


NO_RECOVERY = RecoverySettings()  # a run that stops after pruning, every bench's but recovery.py's
BATCH_SIZE = 4  # windows per forward pass of every benchmark run (the committed tables were measured so)


@dataclass
class Protocol:
    loaded: LoadedModel
    calibration_source: TextSource
    calibration: torch.Tensor
    eval_sources: dict[str, TextSource]
    eval_sets: dict[str, torch.Tensor]
    dense: dict[str, PerplexityResult]
    description: str
    calibration_seed: int

    def with_calibration_seed(self, seed: int) -> Protocol:
        """The same protocol calibrated on the windows that `seed` draws (the text, count and length
        unchanged): a bench repeated over calibration seeds prunes once per seed; the protocol's own
        seed gives the protocol itself."""
        if seed == self.calibration_seed:
            return self
        nsamples, seqlen = self.calibration.shape
        windows = calibration_windows(self.loaded.tokenizer, self.calibration_source, nsamples, seqlen, seed)
        return replace(self, calibration=windows, calibration_seed=seed)

    @property
    def dense_ppl(self) -> dict[str, float]:
        return {name: result.perplexity for name, result in self.dense.items()}

    def run(self, settings: PruneSettings, seed: int, budget: ParameterBudget | None = None,
            recovery: RecoverySettings = NO_RECOVERY) -> RunResult:
        """One run through the run API of the CLI and the app, on a copy of the model: the
        protocol's calibration windows, and every evaluation set's windows one after the other as
        the run's evaluation, so that the run measures each set, before and after a `recovery` too
        (the model it recovers in place is not measured before it otherwise). A recovery's held-out
        windows, the evaluation's first HELDOUT_WINDOWS, are then the first set's first windows."""
        first = next(iter(self.eval_sets))
        calibration, evaluation = self.calibration, torch.cat(list(self.eval_sets.values()))
        spec = RunSpec(settings=settings, nsamples=calibration.shape[0], seqlen=calibration.shape[1], seed=seed,
                       eval_len=evaluation.shape[1], eval_windows=evaluation.shape[0], batch_size=BATCH_SIZE,
                       budget=budget, recovery=recovery)
        data = RunData(calibration_source=self.calibration_source, evaluation_source=self.eval_sources[first],
                       calibration=calibration, evaluation=evaluation)
        return run(self.loaded, spec, data, dense=MeasuredDense(joined(list(self.dense.values())), cached=True))

    def evaluations(self, joined_result: PerplexityResult) -> dict[str, PerplexityResult]:
        """A run's perplexity over the joined evaluation sets (Protocol.run), set by set."""
        evaluated, start = {}, 0
        for name, windows in self.eval_sets.items():
            window_nll = joined_result.window_nll[start:start + windows.shape[0]]
            predicted = windows.shape[0] * (windows.shape[1] - 1)
            nll = sum(window_nll) * (windows.shape[1] - 1)
            evaluated[name] = PerplexityResult(perplexity=perplexity_of(nll / predicted), nll=nll, tokens=predicted,
                                               windows=windows.shape[0], seqlen=windows.shape[1],
                                               window_nll=window_nll)
            start += windows.shape[0]
        return evaluated


def joined(results: list[PerplexityResult]) -> PerplexityResult:
    """One perplexity over the windows of `results` one after the other (each as long as the others)."""
    nll, tokens = sum(result.nll for result in results), sum(result.tokens for result in results)
    return PerplexityResult(perplexity=perplexity_of(nll / tokens), nll=nll, tokens=tokens,
                            windows=sum(result.windows for result in results), seqlen=results[0].seqlen,
                            window_nll=tuple(loss for result in results for loss in result.window_nll))


def add_protocol_args(parser, sparsities: list[float], texts: list[str], resumable: bool = True) -> None:
    """The flags of a perplexity table's protocol (the issue protocol by default), and its output
    with --resume and --ray where the bench is `resumable` (its points are independent runs):
    quality.py and matched.py write tables over the same protocol."""
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsities", nargs="+", type=float, default=sparsities)
    parser.add_argument("--eval", nargs="+", default=texts, choices=["wikitext2", "shakespeare"])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="Markdown file; a .json with the raw rows is written beside it")
    if resumable:
        parser.add_argument("--resume", action="store_true", help="keep the matching rows of --out's JSON")
        add_ray_arg(parser)


def add_ray_arg(parser) -> None:
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run the points on Ray: a cluster's address, or 'local' for a Ray on this machine; each "
                             "worker loads the model and the protocol once (one GPU each, else one CPU thread: "
                             "$SPAP_RAY_CPUS_PER_WORKER)")


def protocol_arguments(args, eval_names: list[str] | None = None) -> tuple:
    """What load_protocol takes, from a bench's flags (a Ray worker builds its own protocol from it)."""
    return (args.model, args.nsamples, args.seqlen, args.eval_windows, args.seed, eval_names or args.eval)


class ProtocolWorker:
    """A Ray actor of a benchmark: the protocol (model, windows, dense perplexities) built once, the
    same as the driver's (fixed seeds), then one measurement at a time."""

    def __init__(self, arguments: tuple) -> None:
        from spap_service.ray_pool import worker_device

        worker_device()  # the CPU threads or the GPU Ray gave it
        self.protocol = load_protocol(*arguments)

    def measure(self, settings: PruneSettings, seed: int, recovery: RecoverySettings) -> dict:
        return measure(self.protocol, settings, seed, recovery)


def measure_each(protocol: Protocol, arguments: tuple, settings: list[PruneSettings], seed: int | Sequence[int],
                 ray_address: str | None, recovery: RecoverySettings = NO_RECOVERY
                 ) -> Iterator[tuple[int, dict]]:
    """(index, measure(...)) for every settings, in order in this process, or as they finish on Ray;
    `seed` is every point's seed, or one seed per point (a bench repeated over calibration seeds);
    every point runs `recovery` after pruning.
    A point that fails on Ray stops the bench with its reason (the rows written so far stay, and
    --resume continues), and a Ray that cannot be reached with connect_ray's one line."""
    seeds = [seed] * len(settings) if isinstance(seed, int) else list(seed)
    if ray_address is None:
        for index, (one, its_seed) in enumerate(zip(settings, seeds, strict=True)):
            yield index, measure(protocol, one, its_seed, recovery)
        return
    from spap_service.ray_pool import connect_ray, pool_map, worker_pool

    try:
        ray = connect_ray(ray_address, import_paths=[str(Path(__file__).resolve().parent)])
    except (SourceUnavailableError, SpapInputError) as exc:  # one line, as the CLI says its errors
        raise SystemExit(str(exc)) from None
    workers = worker_pool(ray, ProtocolWorker, (arguments,))
    calls = [(one, its_seed, recovery) for one, its_seed in zip(settings, seeds, strict=True)]
    for index, result, error in pool_map(ray, workers, "measure", calls):
        if error is not None:
            raise SystemExit(f"point {index} ({settings[index].method} at {settings[index].sparsity}) failed on Ray: "
                             f"{error}")
        yield index, result


def load_protocol(model: str, nsamples: int, seqlen: int, eval_windows: int, seed: int,
                  eval_names: list[str], dtype: str = "auto") -> Protocol:
    loaded = load_model(model, dtype=dtype)
    calibration_source = calibration_text()
    calibration = calibration_windows(loaded.tokenizer, calibration_source, nsamples, seqlen, seed)
    sources = {name: evaluation_text(name) for name in eval_names}
    eval_sets = {name: evaluation_windows(loaded.tokenizer, source, seqlen, eval_windows)
                 for name, source in sources.items()}
    dense = {name: perplexity(loaded.model, windows) for name, windows in eval_sets.items()}
    description = (
        f"Model: {loaded.description}. Calibration: {nsamples} × {seqlen} tokens of "
        f"{Path(calibration_source.label.removeprefix('file ')).name}, seed {seed}. "
        f"Evaluation: first {eval_windows} × {seqlen}-token windows of "
        + ", ".join(Path(source.label.removeprefix("file ")).name for source in sources.values())
        + f". Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, device {loaded.device}, "
        f"weights in {next(loaded.model.parameters()).dtype}, {adam_products(loaded.device)}."
    )
    return Protocol(loaded, calibration_source, calibration, sources, eval_sets, dense, description, seed)


def recovery_record(settings: PruneSettings) -> dict | None:
    """The alternating minimization a run ran (None: none), as a table row records it."""
    return asdict(settings.recovery.altmin) if settings.recovery is not None else None


def rows_of_current_recovery(rows: list[dict], settings_of: Callable[[dict], PruneSettings]) -> list[dict]:
    """The rows of an earlier run that today's settings would reproduce: a row records the
    recovery it ran, and a row without that record (before 2026-11-30) counts as current only if
    its settings run none. The others are measured again by --resume."""
    kept = []
    for row in rows:
        today = recovery_record(settings_of(row))
        recorded = row.get("altmin", None if today is None else "unrecorded")
        if _complete(recorded) == today:
            kept.append(row)
    return kept


def _complete(recorded: dict | str | None) -> dict | str | None:
    """A recorded recovery with the fields it predates at their defaults, which are what it ran (a
    field is only ever added with the old behaviour as its default)."""
    return asdict(AltMinSettings(**recorded)) if isinstance(recorded, dict) else recorded


def recovery_description(rows: list[dict]) -> str:
    """The alternating minimization the rows of a table ran, from the rows themselves."""
    used = {json.dumps(_complete(row["altmin"]), sort_keys=True) for row in rows if row.get("altmin")}
    described = [f"{a['rounds']} × {a['steps']} Adam steps of {a['batch_tokens']} tokens, lr {a['lr']:g}, "
                 f"{a['precision']} products" for a in map(json.loads, sorted(used))]
    return "; ".join(described) or "none in these rows"


def adam_products(device: torch.device) -> str:
    """What precision 'auto' of the recovery's Adam products is on this machine: part of the
    machine's description in every table, since it differs between CPUs."""
    return f"Adam products under 'auto' in {str(adam_step_dtype(device)).removeprefix('torch.')}"


def parse_overrides(spec: str) -> dict[str, str]:
    """'K=10,bias=false' → {'K': '10', 'bias': 'false'}: the keys of spap_core.pipeline.parameters (the
    CLI's and the share link's names), plus `method`."""
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    return {key.strip(): value.strip() for key, value in pairs}


def settings_with(overrides: dict[str, object], sparsity: float, base: PruneSettings | None = None) -> PruneSettings:
    """The settings at `sparsity` (from `base`, else each method's defaults) with the overrides
    applied through the parameter declarations, which parse and check each value; `method` and
    `allocation` (spap_core.methods.allocation.ALLOCATIONS) choose the run's method and its spread over the layers."""
    values = dict(overrides)
    method = str(values.pop("method", base.method if base else "spap"))
    settings = base.for_method(method) if base else PruneSettings(method=method)
    allocation = str(values.pop("allocation", settings.allocation))
    return with_values(replace(settings, sparsity=sparsity).with_allocation(allocation), values)


def variant_settings(variant: str, sparsity: float) -> tuple[str, str, PruneSettings]:
    """'label:overrides' → (label, overrides, the settings at `sparsity` with them applied)."""
    label, _, spec = variant.rpartition(":")
    return label, spec, settings_with(parse_overrides(spec), sparsity)


def measure(protocol: Protocol, settings: PruneSettings, seed: int,
            recovery: RecoverySettings = NO_RECOVERY) -> dict:
    """Prune through the run API the CLI and the app use (Protocol.run) on the calibration windows
    that `seed` draws, recover as `recovery` asks, and measure the result (measured)."""
    return measured(protocol, protocol.with_calibration_seed(seed).run(settings, seed, recovery=recovery))


def measured(protocol: Protocol, result: RunResult) -> dict:
    """A run's perplexity on every evaluation set, with each set's window losses (the intervals'
    input); the layer error relative to the dense output energy, and the time split. A recovered
    run's perplexity is after the recovery, and it adds the same before it
    (`ppl_before_recovery`, `window_nll_before_recovery`) and the recovery's record (`recovery`:
    losses, held-out perplexities, seconds)."""
    experiment = result.experiment
    evaluated = protocol.evaluations(experiment.pruned)
    fields = {"ppl": {name: one.perplexity for name, one in evaluated.items()},
              "window_nll": {name: list(one.window_nll) for name, one in evaluated.items()},
              "relative_error": experiment.result.relative_error,
              "prune_seconds": experiment.prune_seconds, "timings": experiment.result.timings,
              "params_after": experiment.result.params_after}
    if experiment.before_recovery is not None and experiment.recovery is not None:
        before = protocol.evaluations(experiment.before_recovery)
        fields.update(ppl_before_recovery={name: one.perplexity for name, one in before.items()},
                      window_nll_before_recovery={name: list(one.window_nll) for name, one in before.items()},
                      recovery=experiment.recovery.record())
    return fields
