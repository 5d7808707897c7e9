"""What the CLI tests share: the arguments of a small prune of the tiny model, the JSON result on
stdout's last line, and main() run so that an escaping Ctrl-C fails the test instead of pytest."""

from __future__ import annotations

import json

import pytest

from spap_core.cli import main


def prune_args(model, files, *extra):
    return ["prune", "--model", str(model), "--sparsity", "0.25", "--calib-file", str(files["calib"]),
            "--nsamples", "4", "--seqlen", "32", "--seed", "0", "--eval-file", str(files["eval"]),
            "--eval-len", "32", "--eval-windows", "3", "--json", *extra]


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def run(argv: list[str]) -> int:
    """main(argv), failing the test (instead of stopping pytest) if Ctrl-C escapes it."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main")
