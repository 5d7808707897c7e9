"""The library as people install and use it: `pip install .` builds a wheel of spap_core alone
with a `spap` command equal to `python -m spap_core`, and the public API of `spap_core` itself runs
the docstring's example end to end (pruned, saved, reloaded with plain transformers)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from conftest import REPO
from transformers import AutoModelForCausalLM

import spap_core


def test_pip_builds_a_wheel_of_the_library_with_the_spap_command(tmp_path):
    """Built from a copy of what the wheel is made of (setuptools writes its build folder beside the
    sources), without build isolation: from what is installed, so the test stays off the network."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "spap_core", source / "spap_core", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("spap_explorer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert ("spap_core/cli.py" in names and "spap_core/methods/spap.py" in names
            and "spap_core/models/adapters/llama.py" in names)
    assert not [name for name in names if name.startswith(("tests/", "pages/", "spap_service/", "bench/"))]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "spap = spap_core.__main__:run" in entry_points


@pytest.mark.skipif(shutil.which("spap") is None, reason="the project is not installed (pip install -e .)")
def test_the_spap_command_is_python_m_spap_core():
    command = subprocess.run(["spap", "prune", "--help"], capture_output=True, text=True, timeout=300)
    module = subprocess.run([sys.executable, "-m", "spap_core", "prune", "--help"], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert command.returncode == module.returncode == 0
    assert command.stdout.replace("spap prune", "python -m spap_core prune") == module.stdout


def test_importing_the_package_is_light_and_every_public_name_resolves():
    light = subprocess.run([sys.executable, "-c", "import sys, spap_core; print('torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert light.stdout.strip() == "False"
    assert all(getattr(spap_core, name) is not None for name in spap_core.__all__)
    with pytest.raises(AttributeError):
        spap_core.no_such_name  # noqa: B018


def test_the_docstring_example_runs_on_the_tiny_model(tiny_dir, text_files, tmp_path, monkeypatch):
    """The package docstring's example, with the tiny model and texts in place of SmolLM2's."""
    example = textwrap.dedent(spap_core.__doc__.split("\n\n", 1)[1].split("\n\nThe names below")[0])
    ast.parse(example)  # it is Python as written
    code = (example
            .replace('load_model("smollm2")', f'load_model({str(tiny_dir)!r})')
            .replace('"calibration.txt"', repr(str(text_files["calib"])))
            .replace('"evaluation.txt"', repr(str(text_files["eval"])))
            .replace("nsamples=16, seqlen=512", "nsamples=4, seqlen=32")
            .replace("eval_len=512, eval_windows=8", "eval_len=32, eval_windows=2"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "spap_core docstring", "exec"), namespace)  # noqa: S102
    experiment = namespace["result"].experiment
    assert namespace["record"]["ppl"] == experiment.pruned.perplexity
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    ids = torch.arange(3, 13).reshape(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, experiment.result.model(ids).logits)
