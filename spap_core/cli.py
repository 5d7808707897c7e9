"""Command-line interface: `python -m spap_core prune|latency|compare ...`. Parsing and printing
only; the work is done by the library. Progress goes to stderr, the JSON result is stdout's last line
(`compare` prints its verdict in lines of text unless --json)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from spap_core.data.texts import HUB_SPEC, default_text_spec, text_without_model
from spap_core.errors import NumericalError, PruningCancelled, SourceUnavailableError, SpapInputError
from spap_core.evaluation.intervals import compare_runs
from spap_core.evaluation.latency import latency_ratios, measure_latencies
from spap_core.evaluation.zeroshot import (
    STANDARD,
    STANDARD_TASKS,
    check_tasks,
    comparison_rows,
    format_comparison,
    parse_tasks,
)
from spap_core.methods.allocation import ALLOCATIONS, UNIFORM
from spap_core.methods.allocation import DESCRIPTIONS as ALLOCATION_DESCRIPTIONS
from spap_core.methods.reconstruction import OWN, RECONSTRUCTIONS, REFIT, REFIT_ALTMIN, Reconstruction
from spap_core.methods.registry import METHODS, PruneSettings
from spap_core.models.device import resolve_device
from spap_core.models.loading import DEFAULT_MODEL, Placement, load_model, model_files, model_source
from spap_core.models.offload import DEVICE_MAP_STRATEGIES, LAYERS_ON_DISK
from spap_core.pipeline.parameters import (
    DATA_PARAMETERS,
    GROUPS,
    LATENCY_PARAMETERS,
    PARAMETERS,
    RECOVERY_PARAMETERS,
    Parameter,
    recovery_with_values,
    with_values,
)
from spap_core.recovery.loop import RecoveryStep, check_calibration_text
from spap_core.recovery.settings import DISTILL_KEYS, NONE, RECOVERY_MODE, RecoverySettings
from spap_core.runner.execute import run
from spap_core.runner.progress import RunProgress
from spap_core.runner.spec import ParameterBudget, RunOutput, RunSpec, RunTexts, ZeroShotRequest
from spap_core.storage.runs import read_record
from spap_core.system.access import checked_path, confined, output_folder

EXIT_BAD_INPUT = 2
EXIT_NOT_SAVED = 3
# Stopped by Ctrl-C (SIGINT), `kill`/`docker stop`/systemd (SIGTERM) or a closed terminal (SIGHUP):
# 128 + the signal's number, what shells report.
STOP_SIGNALS: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
EXIT_CODES = (f"exit codes: 0 done; {EXIT_BAD_INPUT} refused (one 'error:' line); {EXIT_NOT_SAVED} "
              "pruned but --out could not be saved; "
              + ", ".join(f"{128 + signum} stopped by {name}" for signum, name in STOP_SIGNALS.items()) + ".")
USER_ERRORS = (SpapInputError, SourceUnavailableError, PruningCancelled, NumericalError)

# path flags (destinations) and what their messages call them; models are checked by
# models.model_source, --out has its own check
PATH_FLAGS = {"prune": {"calib_file": "calibration text", "eval_file": "evaluation text",
                        "zeroshot_tasks_dir": "zero-shot task folder", "offload_folder": "offload folder"},
              "latency": {}, "compare": {}}
MODEL_FLAGS = {"prune": ("model",), "latency": ("model", "pruned"), "compare": ()}


def literal(text: str) -> str:
    """Help text as argparse must receive it: argparse expands '%' as a format code ("%(default)s"),
    so a '%' of the text itself ('10%' in a description) is doubled; every help line built from
    data goes through here."""
    return text.replace("%", "%%")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="'smollm2', a model directory, a .gguf file or a hub id")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line (always the last line)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spap_core", description=__doc__, epilog=EXIT_CODES)
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="prune a model and report perplexity before and after",
                                epilog=EXIT_CODES)
    _add_model_args(prune)
    prune.add_argument("--method", default="spap", choices=list(METHODS),
                       help=literal("; ".join(f"{name}: {method.description}" for name, method in METHODS.items())))
    prune.add_argument("--reconstruction", default=OWN, choices=RECONSTRUCTIONS,
                       help=f"the weight update after the selection: '{OWN}' = the method's own; '{REFIT}' = SPAP's "
                            f"refit (ridge towards the dense weights, bias); '{REFIT_ALTMIN}' = that plus SPAP's "
                            "alternating minimization; compares selections with the same reconstruction")
    prune.add_argument("--allocation", default=UNIFORM, choices=ALLOCATIONS,
                       help=literal("; ".join(f"'{name}': {description}"
                                              for name, description in ALLOCATION_DESCRIPTIONS.items())
                                    + "; a model with per-layer widths is saved padded to the widest layer"))
    prune.add_argument("--calib-file", default=None, help="text file; 'wikitext2[:split]' for the hub; default: auto")
    prune.add_argument("--eval-file", default=None, help="text file; 'wikitext2[:split]' for the hub; default: auto")
    prune.add_argument("--out", default=None,
                       help="save the pruned model (safetensors), results.json and the trace in this new or empty "
                            "folder, written beside it and renamed into place once complete; if saving fails, the "
                            f"result is still printed, with save_error, and the exit code is {EXIT_NOT_SAVED}")
    prune.add_argument("--overwrite", action="store_true",
                       help="let --out replace a non-empty folder; the old one is deleted only once the new one is "
                            "complete")
    prune.add_argument("--param-sparsity", type=float, default=None, metavar="SHARE",
                       help="remove this share of the decoder layers' parameters, split between MLP channels and "
                            "attention heads where the summed layer errors on the dense model are smallest (one "
                            "forward pass); "
                            "with --head-sparsity the heads are fixed (0 = untouched) and the MLP fills the rest; "
                            "replaces --sparsity")
    _add_placement_args(prune)
    _add_parameter_args(prune, COMMAND_PARAMETERS["prune"])
    _add_zeroshot_args(prune)
    latency = commands.add_parser("latency", help="latency and memory of the dense model and a pruned one",
                                  epilog=EXIT_CODES)
    _add_model_args(latency)
    latency.add_argument("--pruned", default=None, help="directory of a pruned model saved by `prune --out`")
    _add_parameter_args(latency, COMMAND_PARAMETERS["latency"])
    compare = commands.add_parser("compare", epilog=EXIT_CODES,
                                  help="run A's perplexity against run B's, window by window: their ratio with a "
                                       "95%% interval and a verdict")
    for side in ("a", "b"):
        compare.add_argument(f"run_{side}", metavar=f"RUN_{side.upper()}", help="a run folder saved by prune --out")
    compare.add_argument("--json", action="store_true", help="print the comparison as one JSON line")
    return parser


# The CLI's own defaults of the declared parameters that no settings type holds: its calibration
# size (the app's is smaller), its evaluation and its latency measurement.
CLI_DEFAULTS = {"nsamples": 16, "seqlen": 512, "seed": 0, "eval_len": 512, "eval_windows": 8, "batch_size": 4,
                "prefill_tokens": 512, "decode_tokens": 32, "repeats": 5, "warmup": 2}
COMMAND_PARAMETERS = {"prune": PARAMETERS + RECOVERY_PARAMETERS + DATA_PARAMETERS, "latency": LATENCY_PARAMETERS,
                      "compare": ()}


def _add_parameter_args(parser: argparse.ArgumentParser, parameters: tuple[Parameter, ...]) -> None:
    """One flag per declared parameter (spap_core.pipeline.parameters), in its group, with the settings'
    own default (or the CLI's, for those no settings type holds). A method's (or an allocation
    strategy's) own flags are absent from the namespace unless given (their default is its
    settings'), so a flag of another method than --method (or of another strategy than
    --allocation) is refused instead of dropped (check_args). The declared range is checked there
    too, before the model loads."""
    groups = {name: parser.add_argument_group(_group_title(name, parameters))
              for name in dict.fromkeys(p.group for p in parameters)}
    for parameter in parameters:
        options: dict = {"dest": parameter.key, "help": literal(parameter.help)}
        if parameter.group == "run":  # None = not given (prune_settings fills the default), so
            options["default"] = None  # --param-sparsity can tell a given sparsity from the default
            options["help"] += literal(f" Default: {parameter.format(parameter.read(PruneSettings()))}.")
        elif parameter in RECOVERY_PARAMETERS:  # --recover's own default; the others absent unless given
            default = parameter.read(RecoverySettings())
            if parameter.key == RECOVERY_MODE:
                options["default"] = default
            else:
                options.update(default=argparse.SUPPRESS,
                               help=options["help"] + literal(f" Default: {parameter.format(default)}."))
        elif parameter.method is None and parameter.allocation is None:
            options["default"] = parameter.read(PruneSettings()) if parameter.path else CLI_DEFAULTS[parameter.key]
        else:  # a method's or an allocation strategy's own
            default = parameter.read(PruneSettings(method=parameter.method or PruneSettings.method,
                                                   allocation=parameter.allocation or UNIFORM))
            options.update(default=argparse.SUPPRESS,
                           help=options["help"] + literal(f" Default: {parameter.format(default)}."))
        if parameter.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif parameter.choices:
            options.update(type=parameter.kind, choices=parameter.choices)
        else:
            options.update(type=parameter.kind, metavar=parameter.flags[0].lstrip("-").replace("-", "_").upper())
            if parameter.low is not None:
                options["help"] += literal(f" Between {parameter.bounds_text}.")
        groups[parameter.group].add_argument(*parameter.flags, **options)


def _group_title(group: str, parameters: tuple[Parameter, ...]) -> str:
    """The group's title, naming the method (or the allocation strategy) its flags belong to."""
    owners = {_owner(p) for p in parameters if p.group == group}
    return GROUPS[group] + (f" ({owners.pop()})" if owners != {None} and len(owners) == 1 else "")


def _owner(parameter: Parameter) -> str | None:
    """The choice whose settings hold the parameter, as typed: '--method obs', '--allocation
    global'; None for a setting of every run."""
    if parameter.method is not None:
        return f"--method {parameter.method}"
    if parameter.allocation is not None:
        return f"--allocation {parameter.allocation}"
    return None


def _add_placement_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "models bigger than memory: accelerate places the weights, the walk prunes one decoder layer at a time "
        "on --device, in place (dense perplexity first)")
    group.add_argument("--low-memory", action="store_true",
                       help="every module stays on disk and is loaded for its forward call, the decoder layers "
                            "one at a time (= --device-map disk); large blocks are allocated apart from the heap, "
                            "so the peak is what a step holds at once")
    group.add_argument("--device-map", default=None, metavar="MAP",
                       help=f"{', '.join(DEVICE_MAP_STRATEGIES)} (accelerate's strategies, with --max-memory), "
                            f"'{LAYERS_ON_DISK}' (every module on disk, the embeddings and head too), or a .json file "
                            "of module name → "
                            "device (0, 'cuda:1', 'cpu', 'disk'); decoder layers must stay whole")
    group.add_argument("--max-memory", default=None, metavar="BUDGET",
                       help="per-device budget for the strategies, e.g. '0=20GiB,1=20GiB,cpu=60GiB'")
    group.add_argument("--offload-folder", default=None, metavar="DIR",
                       help="where disk-offloaded and pruned layers are written (default: a temporary folder "
                            "under the cache, removed at exit)")


def placement(args: argparse.Namespace) -> Placement:
    """The weights' placement the flags ask for, refused in one line before anything loads."""
    if args.low_memory and args.device_map not in (None, LAYERS_ON_DISK):
        raise SpapInputError(f"--low-memory means --device-map {LAYERS_ON_DISK}; give one of the two.")
    device_map = LAYERS_ON_DISK if args.low_memory else args.device_map
    return Placement.parse(device_map, args.max_memory, args.offload_folder)


def _add_zeroshot_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("zero-shot accuracy (lm-eval-harness), of the dense and the pruned model")
    group.add_argument("--zeroshot", default=None, metavar="TASKS",
                       help=literal(f"lm-eval tasks separated by commas; '{STANDARD}' = {', '.join(STANDARD_TASKS)} "
                                    "(their data come from the Hugging Face hub)"))
    group.add_argument("--zeroshot-limit", type=int, default=None, metavar="N",
                       help="only each task's first N examples (quick checks; papers use every example)")
    group.add_argument("--zeroshot-tasks-dir", default=None, metavar="DIR",
                       help="a folder of lm-eval task YAML files: its tasks can be named in --zeroshot")


def check_args(args: argparse.Namespace) -> None:
    """Every refusal the arguments alone decide, made before the slow model load: a number out of
    range (which would otherwise fail deep in torch, or after minutes of work), a path the OS
    cannot even look up, an --out whose contents saving would clobber."""
    if args.command == "prune":
        _check_method_flags(args)
        _check_allocation_flags(args)
        if args.param_sparsity is not None:
            if args.sparsity is not None:
                raise SpapInputError("--param-sparsity decides the MLP sparsity itself: drop --sparsity (or drop "
                                     "--param-sparsity to set the sparsities directly).")
            if not 0.0 < args.param_sparsity < 1.0:
                raise SpapInputError(f"--param-sparsity must be a share strictly between 0 and 1 "
                                     f"(got {args.param_sparsity:g}).")
    for declared in COMMAND_PARAMETERS[args.command]:
        if declared.kind in (int, float) and getattr(args, declared.key, None) is not None:
            declared.check(getattr(args, declared.key), declared.flag_name)
    for dest in MODEL_FLAGS[args.command]:
        if (source := getattr(args, dest)) is not None:
            model_source(source)
    for dest, what in PATH_FLAGS[args.command].items():
        if (path := getattr(args, dest)) is not None:
            checked_path(path, what)
    if args.command == "prune" and args.out is not None:
        _check_out(args)
        if args.allocation != UNIFORM and (args.low_memory or args.device_map is not None):
            raise SpapInputError(f"--allocation {args.allocation} gives the layers different widths, which are saved "
                                 "padded from memory, and an offloaded model cannot be: drop --out, or prune with "
                                 "--allocation uniform (or without --low-memory/--device-map).")
    if args.command == "prune":
        _check_zeroshot(args)
        placement(args)
        _check_recovery_flags(args)
        if args.recover != NONE and (args.low_memory or args.device_map is not None):
            raise SpapInputError("--recover trains adapters on the whole model, which an offloaded model cannot hold: "
                                 "drop --low-memory/--device-map, or drop --recover.")


def _given_recovery_flags(args: argparse.Namespace) -> list[Parameter]:
    return [p for p in RECOVERY_PARAMETERS if p.key != RECOVERY_MODE and hasattr(args, p.key)]


def _check_recovery_flags(args: argparse.Namespace) -> None:
    """Refuse a recovery flag the run would not use: any of them without a recovery, and the
    distillation's with a recovery that does not distil."""
    mode = RecoverySettings(mode=args.recover)
    for declared in _given_recovery_flags(args):
        if not mode.enabled:
            raise SpapInputError(f"{declared.flag_name} sets the recovery after pruning, and --recover is {NONE}: "
                                 "drop it, or choose --recover lora, distill or lora+distill.")
        if declared.key in DISTILL_KEYS and not mode.distills:
            raise SpapInputError(f"{declared.flag_name} sets the distillation, which --recover {args.recover} does "
                                 "not do: drop it, or choose --recover distill or lora+distill.")


def _check_zeroshot(args: argparse.Namespace) -> None:
    """The zero-shot flags, and the hub for the tasks that need it, before the model loads: an
    offline machine is told at once, not after the pruning."""
    if args.zeroshot is None:
        if args.zeroshot_limit is not None or args.zeroshot_tasks_dir is not None:
            raise SpapInputError("--zeroshot-limit and --zeroshot-tasks-dir apply to --zeroshot TASKS; add it.")
        return
    if args.zeroshot_limit is not None:
        _check_number("zeroshot_limit", args.zeroshot_limit, 1, None)
    check_tasks(parse_tasks(args.zeroshot), _zeroshot_paths(args))


def _check_number(dest: str, value: int, low: int, high: int | None) -> None:
    """Refuse `value` outside [low, high] (high None: no upper bound), naming the flag as typed."""
    flag = "--" + dest.replace("_", "-")
    if high is None and value < low:
        raise SpapInputError(f"{flag} must be at least {low} (got {value}).")
    if high is not None and not low <= value <= high:
        raise SpapInputError(f"{flag} must be between {low} and {high} (got {value}).")


def _out_path(args: argparse.Namespace) -> Path:
    """--out as the check and the save both see it (~ expanded; a name the OS cannot take refused)."""
    return checked_path(args.out, "output folder")


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an --out that saving would mix with or destroy (spap_core.system.access.output_folder): one
    outside the allowed folders, the current folder, a file, a non-empty folder (unless
    --overwrite), anything that is, holds or lies inside an input of the run, or a place that
    cannot be written."""
    output_folder(_out_path(args), "--out folder", run_inputs(args), replace=args.overwrite,
                  replace_option="--overwrite")


def run_inputs(args: argparse.Namespace) -> dict[str, Path]:
    """What a prune reads from disk, by what each is: the model's files, the texts (given or the
    defaults), a device map file, the offload and zero-shot task folders."""
    inputs = {f"model {name}": path for name, path in model_files(*model_source(args.model)).items()}
    for dest, purpose in (("calib_file", "calibration"), ("eval_file", "evaluation")):
        spec = getattr(args, dest) or default_text_spec(purpose)
        if spec and spec != "default" and not spec.startswith(HUB_SPEC):
            inputs[f"{purpose} text"] = Path(spec)
    if args.device_map is not None and Path(args.device_map).suffix == ".json":
        inputs["device map"] = Path(args.device_map)
    for dest, what in (("offload_folder", "offload folder"), ("zeroshot_tasks_dir", "zero-shot task folder")):
        if getattr(args, dest) is not None:
            inputs[what] = Path(getattr(args, dest))
    return inputs


def _zeroshot_paths(args: argparse.Namespace) -> list[str]:
    return [] if args.zeroshot_tasks_dir is None else [args.zeroshot_tasks_dir]


def prune_settings(args: argparse.Namespace) -> PruneSettings:
    """The settings the flags describe: the method's and the allocation strategy's own flags given,
    over their defaults. With --param-sparsity the budget stands in for the MLP sparsity until
    split_budget decides it."""
    defaults = PruneSettings()
    sparsity = args.param_sparsity if args.param_sparsity is not None else args.sparsity
    settings = PruneSettings(method=args.method, sparsity=defaults.sparsity if sparsity is None else sparsity,
                             head_sparsity=defaults.head_sparsity if args.head_sparsity is None else args.head_sparsity,
                             reconstruction=Reconstruction.named(args.reconstruction), allocation=args.allocation)
    given = _given_method_flags(args) + _given_allocation_flags(args)
    return with_values(settings, {p.key: getattr(args, p.key) for p in given})


def _given_method_flags(args: argparse.Namespace) -> list[Parameter]:
    return [p for p in PARAMETERS if p.method is not None and hasattr(args, p.key)]


def _given_allocation_flags(args: argparse.Namespace) -> list[Parameter]:
    return [p for p in PARAMETERS if p.allocation is not None and hasattr(args, p.key)]


def _check_allocation_flags(args: argparse.Namespace) -> None:
    """Refuse an allocation strategy's flag that the run would not use: one of another strategy
    than --allocation."""
    for declared in _given_allocation_flags(args):
        if declared.allocation != args.allocation:
            raise SpapInputError(f"{declared.flag_name} is a setting of --allocation {declared.allocation}, not of "
                                 f"{args.allocation}: drop it, or choose --allocation {declared.allocation}.")


def _check_method_flags(args: argparse.Namespace) -> None:
    """Refuse a method's flag that the run would not use: one of another method than --method, or
    one of the method's own weight update while --reconstruction replaces that update."""
    for declared in _given_method_flags(args):
        if declared.method != args.method:
            raise SpapInputError(f"{declared.flag_name} is a setting of --method {declared.method}, not of "
                                 f"{args.method}: drop it, or choose --method {declared.method}.")
        if declared.own_update and args.reconstruction != OWN:
            raise SpapInputError(f"{declared.flag_name} sets {args.method}'s own weight update, which "
                                 f"--reconstruction {args.reconstruction} replaces: drop one of the two.")


def run_prune(args: argparse.Namespace) -> dict:
    """The texts read and the model loaded in the order of the refusals, then one run of the run
    API (spap_core.runner.execute.run); its record, with save_error when --out could not be saved."""
    settings = prune_settings(args)  # validate before the slow model load
    resolve_device(args.device)
    # a text file that is missing, no regular file, too big or not UTF-8 is refused before the load
    texts = RunTexts(calibration=text_without_model(args.calib_file, "calibration"),
                     evaluation=text_without_model(args.eval_file, "evaluation"))
    spec = run_spec(args, settings)
    check_calibration_text(spec.recovery, calibration_synthetic=texts.calibration is None)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, placement=placement(args))
    outcome = run(loaded, spec, texts, progress=CliProgress(args.method))
    record = outcome.record()
    if outcome.save_error is not None:
        record["save_error"] = outcome.save_error
    return record


def run_spec(args: argparse.Namespace, settings: PruneSettings) -> RunSpec:
    """The run the flags ask for: in place (the CLI keeps no dense copy), saved in --out when given."""
    budget = None if args.param_sparsity is None else ParameterBudget(args.param_sparsity, args.head_sparsity)
    zeroshot = None if args.zeroshot is None else ZeroShotRequest(parse_tasks(args.zeroshot), args.zeroshot_limit,
                                                                  tuple(_zeroshot_paths(args)))
    output = None if args.out is None else RunOutput(_out_path(args), args.overwrite)
    recovery = recovery_with_values({RECOVERY_MODE: args.recover,
                                     **{p.key: getattr(args, p.key) for p in _given_recovery_flags(args)}})
    return RunSpec(settings=settings, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                   eval_len=args.eval_len, eval_windows=args.eval_windows or None, batch_size=args.batch_size,
                   budget=budget, zeroshot=zeroshot, inplace=True, output=output, recovery=recovery)


class CliProgress(RunProgress):
    """A run's progress on stderr: its notes, the zero-shot tasks and their comparison table, and
    one progress bar each for the dense perplexity, the layers of `method` and the pruned
    perplexity (measured again after a recovery), and one for a recovery's steps with its loss."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.bars: dict[str, tqdm] = {}

    def note(self, text: str) -> None:
        print(f"note: {text}", file=sys.stderr)

    def zeroshot_started(self, which: str, tasks: Sequence[str]) -> None:
        print(f"zero-shot accuracy of the {which} model: {', '.join(tasks)}", file=sys.stderr)

    def zeroshot_compared(self, dense: dict[str, dict], pruned: dict[str, dict]) -> None:
        print(format_comparison(comparison_rows(dense, pruned)), file=sys.stderr)

    @contextlib.contextmanager
    def experiment(self, windows: int) -> Iterator[None]:
        with tqdm(total=windows, desc="dense perplexity", file=sys.stderr, unit="batch") as dense_bar, \
                tqdm(desc=f"{self.method} layers", file=sys.stderr, unit="layer") as layer_bar, \
                tqdm(total=windows, desc="pruned perplexity", file=sys.stderr, unit="batch") as pruned_bar:
            self.bars = {"dense": dense_bar, "layers": layer_bar, "pruned": pruned_bar}
            yield

    def layer(self, done: int, total: int) -> None:
        self.bars["layers"].total = total
        self.bars["layers"].update(done - self.bars["layers"].n)

    def dense_batch(self, done: int, total: int) -> None:
        self.bars["dense"].update(done - self.bars["dense"].n)

    def pruned_batch(self, done: int, total: int) -> None:
        if done < self.bars["pruned"].n:  # the perplexity after the recovery starts over
            self.bars["pruned"].reset(total=total)
        self.bars["pruned"].update(done - self.bars["pruned"].n)

    def recovery_step(self, step: RecoveryStep) -> None:
        bar = self.bars.get("recovery")
        if bar is None:
            bar = self.bars["recovery"] = tqdm(total=step.steps, desc="recovery", file=sys.stderr, unit="step")
        bar.set_postfix(loss=f"{step.loss:.4f}", **({} if step.heldout_ppl is None
                                                     else {"held_out_ppl": f"{step.heldout_ppl:.2f}"}))
        bar.update(step.step - bar.n)
        if step.step == step.steps:
            bar.close()


def run_latency(args: argparse.Namespace) -> dict:
    dense = load_model(args.model, device=args.device, dtype=args.dtype)
    models = [dense.model]
    if args.pruned:
        models.append(load_model(args.pruned, device=args.device, dtype=args.dtype).model)
    reports = measure_latencies(models, seqlen=args.prefill_tokens, decode_tokens=args.decode_tokens,
                                repeats=args.repeats, warmup=args.warmup)
    report = {"model": dense.description, "dense": reports[0].to_dict()}
    if args.pruned:
        report["pruned"] = reports[1].to_dict()
        report["ratios"] = latency_ratios(reports[0], reports[1])
    return report


def run_compare(args: argparse.Namespace) -> dict:
    """Run A's pruned perplexity against run B's (spap_core.evaluation.intervals.compare_runs): the
    ratio ppl_a/ppl_b, its 95% interval (None when the runs do not pair up), the verdict, the tokens
    the pairs cover and what each run is."""
    records = {side: comparable_record(path, side) for side, path in (("A", args.run_a), ("B", args.run_b))}
    comparison = compare_runs(records["A"], records["B"])
    return {"ratio": comparison.ratio, "ci95": None if comparison.ci95 is None else list(comparison.ci95),
            "verdict": comparison.verdict, "tokens": comparison.tokens,
            "a": run_summary(args.run_a, records["A"]), "b": run_summary(args.run_b, records["B"])}


def comparable_record(path: str, side: str) -> dict:
    """The record of the run folder `path` (run A or B), refused in one line when the folder is
    missing, holds no run, or was saved before each window's loss was kept."""
    folder = confined(path, f"run {side} folder")
    if not folder.is_dir():
        raise SpapInputError(f"run {side}: {path[:80]} is not a folder.")
    if not (folder / RUN_RECORD_FILE).is_file():
        raise SpapInputError(f"run {side}: {path[:80]} holds no {RUN_RECORD_FILE}: not a run folder saved by "
                             "prune --out.")
    record = read_record(folder)
    if not record["window_nll"]:
        raise SpapInputError(f"run {side}: {path[:80]} was saved before each window's loss was kept, so it cannot "
                             "be compared window by window; prune it again to compare it.")
    return record


def run_summary(path: str, record: dict) -> dict:
    """What the comparison says of one run: where it is, what it pruned, its perplexity with its
    interval and the evaluation it was measured on."""
    return {"run": path, "method": record["method"], "sparsity": record["sparsity"], "ppl": record["ppl"],
            "ppl_ci95": record["ppl_ci95"], "eval_source": record.get("eval_source"),
            "eval_windows": record["eval_windows"], "eval_len": record["eval_len"], "seed": record.get("seed")}


def comparison_text(report: dict) -> str:
    """A comparison report (run_compare) in lines: each run with its perplexity and interval, the
    ratio with its interval, the verdict."""
    lines = [f"{side.upper()}: {run['run']} ({run['method']} at sparsity {run['sparsity']:g}): "
             f"ppl {run['ppl']:.2f} {_interval_text(run['ppl_ci95'], '.2f')}"
             for side, run in (("a", report["a"]), ("b", report["b"]))]
    ratio = "none" if report["ratio"] is None else f"{report['ratio']:.4f} {_interval_text(report['ci95'], '.4f')}"
    lines.append(f"ratio ppl A / ppl B: {ratio}" + (f" on {report['tokens']:,} tokens" if report["tokens"] else ""))
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def _interval_text(interval: list[float] | None, number_format: str) -> str:
    if interval is None:
        return "(no interval)"
    low, high = interval
    return f"[{low:{number_format}}, {high:{number_format}}]"


def _os_error_message(exc: OSError) -> str:
    """An OS refusal (too long a name, no permission) in one line, naming at most 80 characters
    of the path."""
    if exc.filename is None:
        return str(exc)
    return f"{exc.strerror or exc}: {str(exc.filename)[:80]}"


RUN_RECORD_FILE = "results.json"  # what marks a run folder: the record storage.runs.read_record reads
COMMANDS = {"prune": run_prune, "latency": run_latency, "compare": run_compare}


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C raises KeyboardInterrupt: so every
    cleanup that Ctrl-C runs (the staging folder of --out is deleted) runs for them too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """For the block, SIGTERM and SIGHUP raise StopSignal (unless they are ignored, as nohup ignores
    SIGHUP); a second one while the first is being cleaned up is ignored, so the cleanup finishes.
    Signal handlers only exist in the main thread; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal ignored when the program started stays ignored (nohup's SIGHUP).
    caught = [signum for signum in STOP_SIGNALS
              if signum != signal.SIGINT and signal.getsignal(signum) is not signal.SIG_IGN]

    def stop(signum: int, _frame: object) -> None:
        for other in caught:
            signal.signal(other, signal.SIG_IGN)
        raise StopSignal(signum)

    previous = {signum: signal.signal(signum, stop) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code is the one EXIT_CODES documents, and every failure a user
    can cause (bad input, an OS refusal, Ctrl-C or a stop signal, a failed save) ends in one line
    on stderr rather than a traceback."""
    args = build_parser().parse_args(argv)
    try:
        with signals_as_interrupts():
            check_args(args)
            report = COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {_os_error_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, StopSignal) else signal.SIGINT
        print(f"interrupted: stopped by {STOP_SIGNALS[signum]} before the end; no output folder was written.",
              file=sys.stderr)
        return 128 + signum
    if args.command == "compare" and not args.json:
        print(comparison_text(report))
    else:
        print(json.dumps(report, indent=None if args.json else 2, default=float))
    if "save_error" in report:
        print(f"error: could not save the pruned model in '{args.out[:80]}': {report['save_error']}",
              file=sys.stderr)
        return EXIT_NOT_SAVED
    return 0
