"""A look at what the app's progress line says while a sweep runs on Ray, on a real model: a few
SPAP points on a local Ray (one worker per CPU), the line printed every few seconds, then Cancel,
and how long the points took to stop and whether the workers (with their model) stayed.

    SPAP_DATA_DIR=../shared/data python scripts/ray_progress_check.py --cancel-after 60
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import ray

from pages._job_progress import progress_fraction, progress_text
from spap_core.methods.registry import PruneSettings
from spap_core.models.loading import load_model
from spap_service.data import DataSpec, TextChoice
from spap_service.executors import RayExecutor
from spap_service.jobs import Job
from spap_service.ray_pool import LOCAL, connect_ray
from spap_service.runs import RunRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.2, 0.3])
    parser.add_argument("--cancel-after", type=float, default=60.0, help="seconds; 0 lets the sweep finish")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between two printed lines")
    args = parser.parse_args()

    texts = Path(os.environ["SPAP_DATA_DIR"]) / "wikitext-2"
    data = DataSpec(calibration=TextChoice(kind="file", path=str(texts / "wiki.valid.tokens")),
                    evaluation=TextChoice(kind="file", path=str(texts / "wiki.test.joined.txt")),
                    nsamples=8, seqlen=256, eval_windows=8, eval_len=256, batch_size=4)
    requests = [RunRequest(settings=replace(PruneSettings(), sparsity=s), seed=0, data=data) for s in args.sparsities]
    loaded = load_model(args.model)
    connect_ray(LOCAL)
    executor = RayExecutor(LOCAL)
    pids = sorted(ray.get([worker.pid.remote() for worker in executor._pool(ray, loaded)]))  # loaded before the clock
    job = Job(id="check", owner="me", label="sweep", kind="sweep", function=lambda *_: None, started_at=time.time())
    cancel, outcome = threading.Event(), []

    def sweep() -> None:
        try:
            outcome.append(executor.measure(loaded, requests, job.reporter, cancel))
        except Exception as exc:  # what the job would see
            outcome.append(exc)

    thread = threading.Thread(target=sweep)
    thread.start()
    while thread.is_alive() and not (args.cancel_after and job.elapsed_s >= args.cancel_after):
        thread.join(args.every)
        print(f"{progress_fraction(job.progress):.2f}  {progress_text(job)}", flush=True)
    asked = time.time()
    cancel.set()
    thread.join()
    if isinstance(outcome[0], Exception):
        print(f"{type(outcome[0]).__name__} {time.time() - asked:.1f} s after Cancel")
    else:
        print("finished:", ", ".join(f"{point.perplexity:.2f}" for point in outcome[0]))
    same = sorted(ray.get([worker.pid.remote() for worker in executor._pool(ray, loaded)])) == pids
    print("the same worker processes, with their model:", same)


if __name__ == "__main__":
    main()
