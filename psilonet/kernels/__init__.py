"""Compiled kernels for MLX's CPU backend (each in its own folder with its own CMake file)."""
