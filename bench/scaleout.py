"""Scale-out: the same sweep points on one Ray worker and on two, the wall time of each and their
ratio within one run, next to the points run in this process (all threads of the machine).

    SPAP_DATA_DIR=../shared/data python bench/scaleout.py --out docs/results/scaleout.md

Every Ray worker gets one CPU thread (or one GPU where the machine has GPUs), so on an N-core CPU N
workers run N points at once; the workers load the model before the clock starts, as a warm pool
of the app does. The points are SPAP runs at several sparsities, as a sweep of the app makes them,
and the workers report their progress as they do for the app.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import load_model
from spap_service.data import DataSpec, TextChoice
from spap_service.executors import PointWorker, measure_point
from spap_service.jobs import ProgressReporter
from spap_service.ray_pool import LOCAL, connect_ray, pool_map, worker_pool
from spap_service.runs import RunRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--ray", default=LOCAL, help="the Ray to run on (default: one started on this machine)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    data_dir = Path(os.environ["SPAP_DATA_DIR"]) / "wikitext-2"
    data = DataSpec(calibration=TextChoice(kind="file", path=str(data_dir / "wiki.valid.tokens")),
                    evaluation=TextChoice(kind="file", path=str(data_dir / "wiki.test.joined.txt")),
                    nsamples=args.nsamples, seqlen=args.seqlen, eval_windows=args.eval_windows, eval_len=args.seqlen,
                    batch_size=4)
    requests = [RunRequest(settings=replace(PruneSettings(), sparsity=s), seed=0, data=data) for s in args.sparsities]
    loaded = load_model(args.model)
    ray = connect_ray(args.ray)

    timings, perplexities = {}, {}
    started = time.perf_counter()
    local = [measure_point(loaded, request, ProgressReporter(), threading.Event()) for request in requests]
    timings["this process"] = time.perf_counter() - started
    perplexities["this process"] = [point.perplexity for point in local]
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    for count in args.workers:
        workers = worker_pool(ray, PointWorker, (loaded.source, dtype), count=count)
        ray.get([worker.pid.remote() for worker in workers])  # loaded and ready before the clock starts
        started = time.perf_counter()
        # the workers are asked for their progress once a second, as the app's sweep asks them
        results = sorted(pool_map(ray, workers, "measure", [(request,) for request in requests],
                                  on_progress=lambda index, snapshot: None))
        timings[f"{count} Ray worker{'s' * (count > 1)}"] = time.perf_counter() - started
        errors = [error for _, _, error in results if error]
        if errors:
            raise SystemExit(f"a point failed on Ray: {errors[0]}")
        perplexities[f"{count} Ray worker{'s' * (count > 1)}"] = [result.perplexity for _, result, _ in results]
        for worker in workers:
            ray.kill(worker)

    one = next(key for key in timings if key != "this process")
    lines = ["# Scale-out: sweep points on one Ray worker and on several", "",
             f"Model: {loaded.description}. {len(requests)} SPAP points (sparsities "
             f"{', '.join(f'{s:.0%}' for s in args.sparsities)}, default settings), "
             f"each {args.nsamples} × {args.seqlen} "
             f"calibration and {args.eval_windows} × {args.seqlen} evaluation tokens of WikiText-2, dense perplexity "
             f"once per worker. Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{'a GPU per worker' if torch.cuda.is_available() else 'one CPU thread per Ray worker'}; "
             f"this process uses {torch.get_num_threads()} threads. One run of "
             "`SPAP_DATA_DIR=../shared/data python bench/scaleout.py --out docs/results/scaleout.md`.", "",
             "| where | wall time s | points per minute | speed-up over 1 worker | perplexities |",
             "| --- | --- | --- | --- | --- |"]
    for key, seconds in timings.items():
        speedup = timings[one] / seconds
        lines.append(f"| {key} | {seconds:.1f} | {60 * len(requests) / seconds:.2f} | {speedup:.2f}× | "
                     + ", ".join(f"{p:.2f}" for p in perplexities[key]) + " |")
    same = all(perplexities[key] == perplexities["this process"] for key in perplexities)
    lines += ["", "The perplexities are " + ("identical everywhere." if same else
                                             "not bit-identical between the processes: "
                                             "thread counts change the order of floating-point sums.")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"timings": timings, "perplexities": perplexities,
                                                    "args": vars(args)}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
