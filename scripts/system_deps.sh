#!/usr/bin/env bash
# System libraries psilonet needs outside Python. On Linux: an optimised BLAS that MLX binds
# to at start-up (DESIGN §3; without it float32 matmuls are ~35x slower). macOS needs nothing.
set -euo pipefail
[ "$(uname -s)" = "Linux" ] || exit 0
have_blas() {
  for f in /usr/lib/*-linux-gnu/libopenblas.so.0 /usr/lib*/libopenblas.so.0; do [ -e "$f" ] && return 0; done
  return 1
}
have_blas && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing libopenblas0-pthread (fast BLAS for MLX)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null
elif command -v apt-get >/dev/null; then
  echo "psilonet needs OpenBLAS for fast MLX on Linux. Run this once, then rerun:" >&2
  echo "  sudo apt-get install -y libopenblas0-pthread" >&2
  echo "(continuing with the slow reference BLAS)" >&2
else
  echo "psilonet needs OpenBLAS (libopenblas.so.0) for fast MLX: install it with your package manager." >&2
fi
