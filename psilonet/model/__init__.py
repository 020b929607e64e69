"""The model: loading (offline default via GGUF, llama/qwen2/qwen3 mlx-lm models), the skip-adapter wrapper and the
instrumented forward pass."""
