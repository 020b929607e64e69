"""The model: loading (offline default via GGUF, any mlx-lm model), the skip-adapter wrapper and the
instrumented forward pass."""
