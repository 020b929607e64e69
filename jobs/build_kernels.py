"""Build the quantized CPU matmul extension (psilonet/kernels/qmm) into its build/ folder.

CMake and a C++ compiler come from the system (``scripts/system_deps.sh`` installs them on
Debian), nanobind from requirements.txt, MLX's headers and CMake config from the mlx wheel. A
machine that cannot build it (no compiler, no CMake, macOS, a failed build) gets one line saying
so and exit code 0: decode then uses ``mx.quantized_matmul`` (``psilonet.kernels.qmm``). The
build log is ``psilonet/kernels/qmm/build/build.log``.

    python -m jobs.build_kernels [--force]
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.cli import JobParser

SOURCE = Path(__file__).resolve().parent.parent / "psilonet" / "kernels" / "qmm"
BUILD = SOURCE / "build"


def missing_tools() -> str | None:
    if platform.system() == "Darwin":
        return "macOS: MLX's Metal kernels are used, nothing to build"
    if shutil.which("cmake") is None:
        return "no cmake (Debian: apt-get install cmake)"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (Debian: apt-get install g++)"
    try:
        import nanobind  # noqa: F401
    except ImportError:
        return "nanobind is not installed (pip install -r requirements.txt)"
    return None


def up_to_date() -> bool:
    built = sorted(BUILD.glob("_qmm*.so"))
    if not built:
        return False
    newest = max(p.stat().st_mtime for p in SOURCE.iterdir() if p.is_file())
    return built[0].stat().st_mtime >= newest


def build() -> tuple[bool, str]:
    """``(built, one line)``; never raises for a failed build."""
    why = missing_tools()
    if why:
        return False, why
    BUILD.mkdir(exist_ok=True)
    log = BUILD / "build.log"
    steps = [["cmake", "-S", str(SOURCE), "-B", str(BUILD), f"-DPython_EXECUTABLE={sys.executable}",
              "-DCMAKE_BUILD_TYPE=Release"],
             ["cmake", "--build", str(BUILD), "-j2"]]
    with open(log, "w") as out:
        for cmd in steps:
            try:
                done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return False, f"build failed ({type(exc).__name__}); see {log}"
            if done.returncode != 0:
                return False, f"build failed at `{' '.join(cmd[:2])}`; see {log}"
    return True, f"built {sorted(BUILD.glob('_qmm*.so'))[0].name}"


def main(argv: list[str] | None = None) -> int:
    parser = JobParser(prog="python -m jobs.build_kernels", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if the build is newer than the sources")
    args = parser.parse_args(argv)
    if not args.force and up_to_date():
        ok, line = True, "up to date"
    else:
        ok, line = build()
    if ok:
        from psilonet import runtime

        runtime.setup()  # the fast BLAS before qmm imports mlx
        from psilonet.kernels import qmm

        print(f"qmm extension: {line}; {qmm.describe()}")
    else:
        print(f"qmm extension not built: {line}; decode uses mx.quantized_matmul")
    return 0


if __name__ == "__main__":
    sys.exit(main())
