"""Backend setup: the fast BLAS is bound before mlx, and its absence is reported, not hidden."""

from __future__ import annotations

import subprocess
import sys
import sys as _sys

import numpy as np
import pytest

from psilonet import runtime

PROBE = (
    "from psilonet import runtime; runtime.setup();"
    "import mlx.core as mx, numpy as np; b = runtime.active_blas();"
    "a = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32);"
    "err = float(np.abs(np.array(mx.array(a) @ mx.array(a)) - a @ a).max());"
    "print(b.name, b.fast, err)"
)


def probe(env_value: str, choice_file: str = "/nonexistent/.blas-choice.json", workload: str | None = None):
    import os

    env = {**os.environ, "PSILONET_BLAS": env_value, "PSILONET_BLAS_CHOICE": choice_file}
    env.pop("PSILONET_WORKLOAD", None)
    if workload is not None:
        env["PSILONET_WORKLOAD"] = workload
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    name, fast, err = out.stdout.split()
    return name, fast == "True", float(err), out.stderr


@pytest.mark.skipif(_sys.platform != "linux", reason="the BLAS fix is for Linux")
def test_openblas_is_bound_and_correct_when_installed():
    if runtime.find_blas("openblas") is None:
        pytest.skip("libopenblas0-pthread is not installed")
    name, fast, err, _ = probe("auto")
    assert (name, fast) == ("openblas", True)
    assert err < 1e-3


@pytest.mark.skipif(_sys.platform != "linux", reason="the BLAS fix is for Linux")
@pytest.mark.parametrize("recorded", ["blis", "openblas", "mkl"])
def test_auto_loads_the_choice_recorded_at_setup(tmp_path, recorded):
    if runtime.find_blas("openblas") is None or runtime.find_blas(recorded) is None:
        pytest.skip(f"needs libopenblas0-pthread and {recorded}")
    record = tmp_path / "choice.json"
    record.write_text('{"choice": "%s"}' % recorded)
    name, fast, err, _ = probe("auto", str(record))
    assert (name, fast) == (recorded, True)
    assert err < 1e-3
    record.write_text("not json")  # a broken record falls back to the default order
    assert probe("auto", str(record))[0] == "openblas"


@pytest.mark.skipif(_sys.platform != "linux", reason="the BLAS fix is for Linux")
def test_each_workload_loads_its_own_recorded_choice(tmp_path):
    if runtime.find_blas("openblas") is None or runtime.find_blas("mkl") is None:
        pytest.skip("needs libopenblas0-pthread and the mkl wheel")
    record = tmp_path / "choice.json"
    record.write_text('{"choice": "mkl", "by_workload": {"decode": "mkl", "training": "openblas"}}')
    assert probe("auto", str(record))[:2] == ("mkl", True)  # no workload named: decode
    assert probe("auto", str(record), workload="training")[:2] == ("openblas", True)
    assert probe("auto", str(record), workload="nonsense")[:2] == ("mkl", True)
    record.write_text('{"choice": "openblas"}')  # a record from before per-workload choices
    assert probe("auto", str(record), workload="training")[0] == "openblas"
    assert probe("auto", str(record))[0] == "openblas"


def test_importing_psilonet_binds_nothing_and_an_unbound_model_load_warns():
    code = ("import sys, logging; logging.basicConfig(); import psilonet, psilonet.generation.dosing;"
            "from psilonet import runtime; print(runtime._active is None, 'PSILONET_WORKLOAD' in __import__('os').environ);"
            "runtime.warn_if_unbound()")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PSILONET_WORKLOAD", "PSILONET_BLAS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=__import__("pathlib").Path(__file__).parents[1])
    assert out.stdout.split() == ["True", "False"]
    assert "call psilonet.runtime.setup() before importing mlx" in out.stderr


def test_training_jobs_declare_their_workload_before_psilonet_binds_a_blas():
    out = subprocess.run([sys.executable, "-c", "import jobs.train, psilonet.runtime as r; print(r.workload())"],
                         capture_output=True, text=True, check=True, cwd=__import__("pathlib").Path(__file__).parents[1],
                         env={k: v for k, v in __import__("os").environ.items() if k != "PSILONET_WORKLOAD"})
    assert out.stdout.split() == ["training"]


@pytest.mark.skipif(_sys.platform != "linux", reason="the BLAS fix is for Linux")
def test_reference_blas_is_reported():
    name, fast, err, _ = probe("reference")
    assert (name, fast) == ("reference", False)
    assert err < 1e-3


@pytest.mark.skipif(_sys.platform != "linux", reason="the BLAS fix is for Linux")
def test_missing_library_is_named_and_read_as_auto():
    name, fast, _, stderr = probe("/nonexistent/libopenblas.so.0")
    assert "PSILONET_BLAS: /nonexistent/libopenblas.so.0 does not exist" in stderr
    assert (name, fast) == probe("auto")[:2]  # the measured or default library, not the reference BLAS


def test_choose_blas_leaves_out_a_library_whose_child_fails():
    from jobs import choose_blas

    result = choose_blas.measure("openblas", {"hidden_size": 576})  # the child dies on the missing shapes
    assert result["blas"] is None and "KeyError" in result["error"]
