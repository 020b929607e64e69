"""psilonet: skip-layer adapters, activation analysis and dosed generation for small MLX LMs.

On the Linux CPU, MLX is only fast once it is bound to an optimised BLAS, which must happen
before anything imports ``mlx``. Importing ``psilonet`` changes nothing: every entry point (the
jobs, the benches, the app, the tests' conftest) calls :func:`psilonet.runtime.setup` first. In
a notebook or script of your own, do the same before importing mlx or a psilonet module that
uses it::

    from psilonet import runtime
    runtime.setup()

Loading a model without it logs a warning that says so.
"""
