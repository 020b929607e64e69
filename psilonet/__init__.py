"""psilonet: skip-layer adapters, activation analysis and dosed generation for small MLX LMs.

Importing the package binds MLX to a fast BLAS first (see :mod:`psilonet.runtime`), so every
module that uses ``mlx`` must be imported through ``psilonet``.
"""

from psilonet import runtime as _runtime

_runtime.setup()
