"""Backend setup: make MLX fast on the CPU before anything imports it.

The Linux ``mlx-cpu`` wheel bundles the reference (netlib) BLAS, which runs float32 matmuls
at about 5 GFLOP/s. MLX resolves its CBLAS symbols at load time, so loading an optimised BLAS
with global symbols *before* ``import mlx`` makes MLX bind to it instead (about 170 GFLOP/s
with OpenBLAS on two cores). :func:`setup` must therefore run before the first ``import mlx``:
each entry point calls it once, explicitly, before its other imports (``jobs.*``, ``bench.*``,
``streamlit_app.py``, ``shared_app.py``, ``tests/conftest.py``, a Ray trial); importing
``psilonet`` does not. :func:`warn_if_unbound` (called when a model loads) says when it was
forgotten.

Which library is loaded is chosen by ``PSILONET_BLAS``:
``auto`` (default: the library that ``python -m jobs.choose_blas`` measured fastest at the
model's shapes for this process's workload during ``make setup``, recorded in
``.blas-choice.json``; without that record OpenBLAS, else BLIS, else MKL), ``openblas``, ``blis``, ``mkl``, ``reference`` (load nothing,
useful for benchmarks) or an absolute path to a shared library exporting CBLAS.

OpenBLAS and BLIS come from Debian packages (``scripts/system_deps.sh``); Intel MKL from the
``mkl`` wheel on PyPI (``requirements.txt``, Linux x86-64), whose ``libmkl_rt`` lands in the
virtual environment's ``lib/`` and finds its sibling libraries itself. MKL threads through Intel
OpenMP (``MKL_THREADING_LAYER=INTEL``, from the ``intel-openmp`` wheel) unless the variable is
already set.

**Workloads.** One library per process, but decode and training want different ones here
(decode streams every weight once per token, training multiplies large batches), so the record
keeps a choice per workload. ``PSILONET_WORKLOAD`` names this process's: ``decode`` (the default:
the app, dose and capture jobs, benches of decode) or ``training`` (``jobs.train``, ``jobs.sweep``
and ``bench.train_throughput`` call ``setup(workload="training")``, which sets the variable unless
it is set already, so their trial and rank processes inherit it). ``PSILONET_BLAS_CHOICE``
names another record file.
On macOS nothing is loaded: MLX uses Accelerate and Metal there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from psilonet import blas_env

log = logging.getLogger("psilonet.runtime")

# Debian/Ubuntu multiarch locations first; find_library covers other distributions.
_CANDIDATES = {
    "openblas": [
        "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
        "/usr/lib64/libopenblas.so.0",
        "/usr/lib/libopenblas.so.0",
    ],
    "blis": [
        "/usr/lib/{arch}-linux-gnu/blis-pthread/libblis.so.4",
        "/usr/lib/{arch}-linux-gnu/libblis.so.4",
        "/usr/lib64/libblis.so.4",
    ],
    "mkl": [
        "{prefix}/lib/libmkl_rt.so.3",
        "{prefix}/lib/libmkl_rt.so.2",
    ],
}
_FIND_LIBRARY_NAMES = {"openblas": "openblas", "blis": "blis", "mkl": "mkl_rt"}
DEFAULT_ORDER = ("openblas", "blis", "mkl")

INSTALL_HINT = "sudo apt-get install -y libopenblas0-pthread"


@dataclass(frozen=True)
class BlasInfo:
    """Which BLAS MLX is bound to in this process."""

    name: str  # "openblas", "blis", "reference", "accelerate" or "custom"
    path: str | None
    fast: bool

    def describe(self) -> str:
        if self.name == "accelerate":
            return "Apple Accelerate/Metal (macOS)"
        if self.name == "reference":
            return "reference (netlib) BLAS bundled with mlx-cpu: about 35x slower float32 matmuls"
        return f"{self.name} ({self.path})"


_active: BlasInfo | None = None


def _arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)


def find_blas(name: str) -> str | None:
    """Path of an installed ``openblas`` or ``blis`` shared library, or None."""
    for pattern in _CANDIDATES[name]:
        path = pattern.format(arch=_arch(), prefix=sys.prefix)
        if os.path.exists(path):
            return path
    return ctypes.util.find_library(_FIND_LIBRARY_NAMES[name])


def choice_file() -> Path:
    """Where ``jobs.choose_blas`` records the measured choice (``PSILONET_BLAS_CHOICE``)."""
    default = Path(__file__).resolve().parent.parent / ".blas-choice.json"
    return Path(os.environ.get("PSILONET_BLAS_CHOICE") or default)


WORKLOADS = ("decode", "training")


def workload() -> str:
    """This process's workload for the BLAS choice: ``PSILONET_WORKLOAD``, ``decode`` by default."""
    return blas_env.workload_setting()


def recorded_choice(for_workload: str | None = None) -> str | None:
    """``openblas``, ``blis`` or ``mkl`` as measured at setup for ``for_workload`` (this process's
    by default; a record without per-workload choices gives its overall one), or None when there
    is no usable record."""
    for_workload = for_workload or workload()
    record = blas_env.read_choice(choice_file(), explicit=bool(os.environ.get("PSILONET_BLAS_CHOICE")))
    try:
        by_workload = record.get("by_workload") or {}
        name = by_workload.get(for_workload) or record["choice"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return name if name in _CANDIDATES else None


def _load_global(path: str) -> None:
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def setup(workload: str | None = None) -> BlasInfo:
    """Bind MLX to a fast BLAS (Linux) and return what is active. Idempotent.

    ``workload`` (``decode`` or ``training``) names this process's workload where
    ``PSILONET_WORKLOAD`` does not already; child processes inherit it.
    """
    global _active
    # transformers (imported by mlx-lm) announces at import that PyTorch is absent; we never need it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if workload is not None:
        if workload not in WORKLOADS:
            raise ValueError(f"workload: one of {', '.join(WORKLOADS)}, got {workload!r}")
        os.environ.setdefault("PSILONET_WORKLOAD", workload)
    if _active is not None:
        return _active
    if sys.platform == "darwin":
        _active = BlasInfo("accelerate", None, True)
        return _active

    choice = blas_env.blas_setting()  # a bad value is named in a warning and read as auto
    if "mlx.core" in sys.modules and choice != "reference":
        # Too late: MLX already resolved its BLAS symbols. Say so rather than pretend.
        log.warning(
            "mlx was imported before psilonet.runtime; the BLAS fix cannot apply. "
            "Import psilonet before mlx."
        )

    path: str | None = None
    name = "reference"
    if choice == "auto":
        recorded = recorded_choice()
        order = [recorded] + [c for c in DEFAULT_ORDER if c != recorded] if recorded else list(DEFAULT_ORDER)
        for candidate in order:
            path = find_blas(candidate)
            if path:
                name = candidate
                break
    elif choice in _CANDIDATES:
        path = find_blas(choice)
        name = choice if path else "reference"
    elif choice != "reference":
        path, name = choice, "custom"

    if path:
        if name == "blis":
            # BLIS runs single-threaded unless told otherwise (measured: 82 vs 155 GFLOP/s).
            os.environ.setdefault("BLIS_NUM_THREADS", str(os.cpu_count() or 1))
        if name == "mkl":
            # Intel OpenMP threads (the wheel's libiomp5); sequential MKL halves training GEMMs.
            os.environ.setdefault("MKL_THREADING_LAYER", "INTEL")
        try:
            _load_global(path)
        except OSError as exc:
            log.warning("could not load BLAS %s: %s", path, exc)
            path, name = None, "reference"

    _active = BlasInfo(name, path, fast=path is not None)
    if not _active.fast and choice != "reference":
        log.warning(
            "No optimised BLAS found: MLX float32 matmuls will be about 35x slower. "
            "Install it with: %s",
            INSTALL_HINT,
        )
    return _active


def warn_if_unbound() -> None:
    """Log a warning when MLX runs on Linux without :func:`setup` having bound a BLAS."""
    if _active is None and sys.platform != "darwin" and os.environ.get("PSILONET_BLAS", "auto") != "reference":
        log.warning("MLX is using its bundled reference BLAS (about 35x slower float32 matmuls): call "
                    "psilonet.runtime.setup() before importing mlx (README, 'Fast MLX on the Linux CPU').")


def active_blas() -> BlasInfo:
    """The BLAS chosen by :func:`setup` (runs it if needed)."""
    return setup()


def data_dir() -> Path:
    """Root of the catalog, runs, models and corpora (``PSILONET_DATA`` or ./data)."""
    value = os.environ.get("PSILONET_DATA")
    if value is None:
        return Path(__file__).resolve().parent.parent / "data"
    if not value.strip():  # an empty value would silently mean the current folder
        raise ValueError("PSILONET_DATA: is set but empty; unset it (to use ./data) or name a folder")
    return Path(value)
