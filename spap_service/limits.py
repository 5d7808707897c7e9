"""How much work one request and one browser session may ask of the server. A public demo
(SPAP_ALLOWED_ROOTS set) gets strict defaults; each limit can be set by its environment variable
(0 = no limit), and the pages show the limits that apply."""

from __future__ import annotations

import os
from dataclasses import dataclass

from spap_core.errors import SpapInputError
from spap_core.system.access import allowed_roots
from spap_service.run_index import RunCaps

MAX_CALIBRATION_TOKENS_ENV = "SPAP_MAX_CALIBRATION_TOKENS"
MAX_EVALUATION_TOKENS_ENV = "SPAP_MAX_EVALUATION_TOKENS"
MAX_JOBS_PER_SESSION_ENV = "SPAP_MAX_JOBS_PER_SESSION"
MAX_QUEUED_JOBS_ENV = "SPAP_MAX_QUEUED_JOBS"
MAX_SAVED_RUNS_ENV = "SPAP_MAX_SAVED_RUNS"
MAX_SAVED_RUNS_MB_ENV = "SPAP_MAX_SAVED_RUNS_MB"
SAVED_RUNS_PER_SESSION_ENV = "SPAP_SAVED_RUNS_PER_SESSION"
# What the results folder keeps of the app's runs on every server, under 2 GiB. Measured on SmolLM2 in
# float32, a run's record and trace take about 2 MB; its pruned weights, kept where they fit
# (spap_service.runs.save_outcome), add what pruning changed: 75 MB for the CPU default run (30%, no
# alternating minimization), 255 MB for the class demo run (20%, alternating minimization). So the byte
# cap, not the count, bounds a class: past it the oldest runs' weights go first, their records and charts
# stay, and whole runs go only when the records alone are past it (spap_service.run_index.enforce_caps).
SAVED_RUN_DEFAULTS = {  # in RunCaps' order
    MAX_SAVED_RUNS_ENV: 1000, MAX_SAVED_RUNS_MB_ENV: 2048, SAVED_RUNS_PER_SESSION_ENV: 100}
SHARE_RUNS_ENV = "SPAP_SHARE_RUNS"
# A public demo's defaults: a run about four times the CPU preset, two jobs queued per session.
DEMO_DEFAULTS = {MAX_CALIBRATION_TOKENS_ENV: 32 * 512, MAX_EVALUATION_TOKENS_ENV: 32 * 512, MAX_JOBS_PER_SESSION_ENV: 2,
                 MAX_QUEUED_JOBS_ENV: 64}
# Every server's cap on waiting jobs, whoever submits them: a class of 40 with a run and a sweep each
# fits, a script that drops its cookie to get new sessions does not fill the queue.
DEFAULT_MAX_QUEUED_JOBS = 100


@dataclass(frozen=True)
class ServerLimits:
    public_demo: bool
    max_calibration_tokens: int | None
    max_evaluation_tokens: int | None
    max_jobs_per_session: int | None
    max_queued_jobs: int | None  # jobs waiting at once, over every session
    share_runs: bool  # whether a session may list other sessions' saved runs
    saved_runs: RunCaps  # how many of the app's runs the results folder keeps

    def check(self, nsamples: int, seqlen: int, eval_windows: int, eval_len: int) -> None:
        """Refuse a run larger than the server allows, before it is queued."""
        if self.max_calibration_tokens and nsamples * seqlen > self.max_calibration_tokens:
            raise SpapInputError(f"{nsamples} × {seqlen} = {nsamples * seqlen:,} calibration tokens is more than this "
                                 f"server allows per run ({self.max_calibration_tokens:,}); use fewer samples or "
                                 "shorter windows.")
        if self.max_evaluation_tokens and (eval_windows == 0 or eval_windows * eval_len > self.max_evaluation_tokens):
            asked = ("the whole evaluation text" if eval_windows == 0
                     else f"{eval_windows * eval_len:,} evaluation tokens")
            raise SpapInputError(f"{asked[0].upper()}{asked[1:]} is more than this server allows per run "
                                 f"({self.max_evaluation_tokens:,} tokens); evaluate fewer windows.")

    def describe(self) -> str | None:
        """The limits in one sentence, or None when there are none."""
        parts = []
        if self.max_calibration_tokens:
            parts.append(f"{self.max_calibration_tokens:,} calibration tokens per run")
        if self.max_evaluation_tokens:
            parts.append(f"{self.max_evaluation_tokens:,} evaluation tokens per run")
        if self.max_jobs_per_session:
            parts.append(f"{self.max_jobs_per_session} queued or running jobs per browser session")
        if self.max_queued_jobs:
            parts.append(f"{self.max_queued_jobs} jobs waiting in its queue at once")
        if not parts:
            return None
        return "This server allows at most " + ", ".join(parts) + "."


def _limit(name: str, demo: bool, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return DEMO_DEFAULTS.get(name, default) if demo else default
    try:
        value = int(raw)
    except ValueError:
        raise SpapInputError(f"${name} must be a whole number (got {raw!r}).") from None
    return value if value > 0 else None


def server_limits() -> ServerLimits:
    demo = allowed_roots() is not None
    share = os.environ.get(SHARE_RUNS_ENV, "0" if demo else "1").lower() in {"1", "true", "yes"}
    count, megabytes, per_session = (_limit(name, demo, default) for name, default in SAVED_RUN_DEFAULTS.items())
    saved = RunCaps(max_count=count, max_bytes=None if megabytes is None else megabytes * 2**20,
                    per_session=per_session)
    return ServerLimits(public_demo=demo, max_calibration_tokens=_limit(MAX_CALIBRATION_TOKENS_ENV, demo),
                        max_evaluation_tokens=_limit(MAX_EVALUATION_TOKENS_ENV, demo),
                        max_jobs_per_session=_limit(MAX_JOBS_PER_SESSION_ENV, demo),
                        max_queued_jobs=_limit(MAX_QUEUED_JOBS_ENV, demo, DEFAULT_MAX_QUEUED_JOBS), share_runs=share,
                        saved_runs=saved)
