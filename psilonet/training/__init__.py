"""Training skip adapters: the training loop, the LM loss, multi-seed sweeps (local or Ray Tune) and
their statistics."""
