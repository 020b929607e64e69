"""How much each integer activation mode of the quantized matmul changes each layer's output,
on the default model's q4 weights and the reference paragraph of ``jobs.check_model``.

For every weight product of one forward pass over the paragraph (its real inputs), the output in
int8 and int16 mode is compared with float32-activation mode (equal to ``mx.quantized_matmul``
up to summation order): the relative RMS error ``||y - y_float|| / ||y_float||``, then per layer
kind its median and maximum over the 30 blocks. The paragraph loss in each mode closes it.

    python -m bench.qmm_error
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

from psilonet import runtime

runtime.setup()  # bind the fast BLAS before anything imports mlx
import mlx.core as mx

from psilonet.kernels import qmm
from psilonet.model import quantized
from psilonet.training import evaluation

MODES = {"int8": 1, "int16": 2}


def main(argv=None) -> int:
    ext = qmm.extension()
    if ext is None:
        print(f"the extension is not available: {qmm.describe()}", file=sys.stderr)
        return 2
    model, tokenizer = quantized.load_model(weights="q4")
    ids = tokenizer.encode(evaluation.REFERENCE_PARAGRAPH)
    errors: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in MODES}
    original = quantized.QuantizedLinear.__call__

    def measured(self, x):
        ref = ext.quantized_matmul(x, self.weight, self.scales, self.biases, self.group_size, self.bits, 0)
        for name, code in MODES.items():
            y = ext.quantized_matmul(x, self.weight, self.scales, self.biases, self.group_size, self.bits, code)
            errors[name][self._kind].append((mx.sqrt(((y - ref) ** 2).sum() / (ref ** 2).sum())).item())
        return original(self, x)

    for path, module in model.named_modules():
        if isinstance(module, quantized.QuantizedLinear):
            module._kind = path.rsplit(".", 1)[-1]
    quantized.QuantizedLinear.__call__ = measured
    try:
        mx.eval(model(mx.array([ids])))
    finally:
        quantized.QuantizedLinear.__call__ = original
    print(f"relative RMS error of each layer's output vs float32 activations, median [max] over "
          f"{len(model.model.layers)} blocks ({len(ids)} tokens):")
    kinds = list(errors["int8"])
    print(f"  {'layer':10s} " + "  ".join(f"{m:>18s}" for m in MODES))
    for kind in kinds:
        cells = [f"{statistics.median(errors[m][kind]):.2e} [{max(errors[m][kind]):.2e}]" for m in MODES]
        print(f"  {kind:10s} " + "  ".join(f"{c:>18s}" for c in cells))
    import os
    losses = {}
    for mode in ("float", "int16", "int8"):
        os.environ["PSILONET_QMM"] = mode
        losses[mode] = evaluation.mean_token_loss(model, ids)
    print("paragraph loss (nats): " + ", ".join(f"{m} {v:.5f}" for m, v in losses.items())
          + f"; vs float: int16 {losses['int16'] - losses['float']:+.5f}, int8 {losses['int8'] - losses['float']:+.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
