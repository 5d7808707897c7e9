"""Command-line interface: `python -m spap_core prune|latency ...`. Parsing and printing only;
the work is done by the library. Progress goes to stderr, the JSON result is stdout's last line."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from spap_core.data import calibration_windows, evaluation_windows, resolve_text
from spap_core.errors import NumericalError, PruningCancelled, SourceUnavailableError, SpapInputError
from spap_core.experiment import plan_run, run_experiment
from spap_core.latency import latency_ratios, measure_latencies
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.models import DEFAULT_MODEL, load_model, resolve_device
from spap_core.parameters import GROUPS, PARAMETERS, SETTINGS_PARAMETERS, with_values
from spap_core.runs import write_run
from spap_core.shrink import save_pruned


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="'smollm2', a model directory, a .gguf file or a hub id")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line (always the last line)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spap_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="prune a model and report perplexity before and after")
    _add_model_args(prune)
    prune.add_argument("--method", default="spap", choices=list(METHODS),
                       help="; ".join(f"{name}: {method.description}" for name, method in METHODS.items()))
    prune.add_argument("--calib-file", default=None, help="text file; 'wikitext2[:split]' for the hub; default: auto")
    prune.add_argument("--eval-file", default=None, help="text file; 'wikitext2[:split]' for the hub; default: auto")
    prune.add_argument("--eval-len", type=int, default=512, help="evaluation window length (tokens)")
    prune.add_argument("--eval-windows", type=int, default=8, help="first W windows; 0 = the whole text")
    prune.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    prune.add_argument("--out", default=None, help="save the pruned model (safetensors) and results.json here")
    _add_parameter_args(prune)
    latency = commands.add_parser("latency", help="latency and memory of the dense model and a pruned one")
    _add_model_args(latency)
    latency.add_argument("--pruned", default=None, help="directory of a pruned model saved by `prune --out`")
    latency.add_argument("--seqlen", type=int, default=512, help="prefill window length")
    latency.add_argument("--decode-tokens", type=int, default=32)
    latency.add_argument("--repeats", type=int, default=5)
    latency.add_argument("--warmup", type=int, default=2)
    return parser


CLI_DEFAULTS = {"nsamples": 16, "seqlen": 512, "seed": 0}  # the CLI's calibration size (the app's is smaller)


def _add_parameter_args(parser: argparse.ArgumentParser) -> None:
    """One flag per declared hyperparameter (spap_core.parameters), in its group, with the
    settings' own default; SPAP's flags apply to --method spap."""
    defaults = PruneSettings()
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for parameter in PARAMETERS:
        default = parameter.read(defaults) if parameter.path else CLI_DEFAULTS[parameter.key]
        options: dict = {"dest": parameter.key, "default": default, "help": parameter.help}
        if parameter.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = parameter.kind
            if parameter.choices:
                options["choices"] = parameter.choices
        groups[parameter.group].add_argument(*parameter.flags, **options)


def prune_settings(args: argparse.Namespace) -> PruneSettings:
    """The settings the flags describe; SPAP's hyperparameters only reach SPAP."""
    settings = PruneSettings(method=args.method, sparsity=args.sparsity)
    values = {p.key: getattr(args, p.key) for p in SETTINGS_PARAMETERS if p.key != "sparsity"}
    return with_values(settings, values) if args.method == "spap" else settings


def run_prune(args: argparse.Namespace) -> dict:
    settings = prune_settings(args)  # validate before the slow model load
    resolve_device(args.device)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    # every refusal that the model's config decides, before any text is read or forward pass run
    _, adjustments = plan_run(loaded, settings, (args.seqlen, args.eval_len))
    for note in adjustments:
        print(f"note: {note}", file=sys.stderr)
    calib_text = resolve_text(args.calib_file, "calibration", loaded.model, loaded.tokenizer)
    eval_text = resolve_text(args.eval_file, "evaluation", loaded.model, loaded.tokenizer)
    calibration = calibration_windows(loaded.tokenizer, calib_text, args.nsamples, args.seqlen, args.seed)
    windows = evaluation_windows(loaded.tokenizer, eval_text, args.eval_len, args.eval_windows or None)
    with tqdm(total=windows.shape[0], desc="dense perplexity", file=sys.stderr, unit="batch") as dense_bar, \
            tqdm(desc=f"{args.method} layers", file=sys.stderr, unit="layer") as layer_bar, \
            tqdm(total=windows.shape[0], desc="pruned perplexity", file=sys.stderr, unit="batch") as pruned_bar:
        def on_layer(done: int, total: int) -> None:
            layer_bar.total = total
            layer_bar.update(done - layer_bar.n)

        experiment = run_experiment(
            loaded, calibration, windows, settings, seed=args.seed, batch_size=args.batch_size, inplace=True,
            on_layer=on_layer, on_dense_batch=lambda i, n: dense_bar.update(i - dense_bar.n),
            on_pruned_batch=lambda i, n: pruned_bar.update(i - pruned_bar.n),
        )
    result = experiment.result
    record = experiment.record(
        loaded, eval_source=eval_text.label, calib_source=calib_text.label, calib_synthetic=calib_text.synthetic,
        nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
    )
    if args.out:
        save_pruned(result.model, loaded.tokenizer, args.out)
        write_run(args.out, record, result)
    return record


def run_latency(args: argparse.Namespace) -> dict:
    dense = load_model(args.model, device=args.device, dtype=args.dtype)
    models = [dense.model]
    if args.pruned:
        models.append(load_model(args.pruned, device=args.device, dtype=args.dtype).model)
    reports = measure_latencies(models, seqlen=args.seqlen, decode_tokens=args.decode_tokens, repeats=args.repeats,
                                warmup=args.warmup)
    report = {"model": dense.description, "dense": reports[0].to_dict()}
    if args.pruned:
        report["pruned"] = reports[1].to_dict()
        report["ratios"] = latency_ratios(reports[0], reports[1])
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run_prune(args) if args.command == "prune" else run_latency(args)
    except (SpapInputError, SourceUnavailableError, PruningCancelled, NumericalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, default=float))
    else:
        print(json.dumps(report, indent=2, default=float))
    return 0
