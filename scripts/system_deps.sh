#!/usr/bin/env bash
# System packages psilonet needs outside Python. On Linux: optimised BLAS libraries that MLX binds
# to at start-up (without one float32 matmuls are ~35x slower; OpenBLAS and BLIS are both
# installed and `python -m jobs.choose_blas` keeps the faster at the model's shapes), and Chromium with its
# driver for the browser test of the app. macOS needs nothing (Metal; the browser test skips).
set -euo pipefail
[ "$(uname -s)" = "Linux" ] || exit 0
have_lib() {
  for f in /usr/lib/*-linux-gnu/$1 /usr/lib/*-linux-gnu/*/$1 /usr/lib*/$1; do [ -e "$f" ] && return 0; done
  return 1
}
missing=""
have_lib libopenblas.so.0 || missing="libopenblas0-pthread"
have_lib libblis.so.4 || missing="$missing libblis4-pthread"
command -v chromium >/dev/null || missing="$missing chromium"
command -v chromedriver >/dev/null || missing="$missing chromium-driver"
# CMake and a C++ compiler build the quantized matmul extension (jobs.build_kernels).
command -v cmake >/dev/null || missing="$missing cmake"
command -v g++ >/dev/null || command -v c++ >/dev/null || missing="$missing g++"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
elif command -v apt-get >/dev/null; then
  echo "psilonet needs these Debian packages: OpenBLAS/BLIS for fast MLX, Chromium for the browser test, CMake/g++ for the 4-bit kernel." >&2
  echo "Run this once, then rerun:" >&2
  echo "  sudo apt-get install -y$missing" >&2
  echo "(continuing: without OpenBLAS MLX uses the slow reference BLAS; without Chromium the browser test skips; without CMake/g++ 4-bit decode uses mx.quantized_matmul)" >&2
else
  echo "psilonet needs OpenBLAS (libopenblas.so.0) for fast MLX: install it with your package manager." >&2
fi
