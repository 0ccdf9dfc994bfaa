"""Run an ONNX model in the ONNX reference implementation (onnx.reference.ReferenceEvaluator).

The bfloat16 tests use it: tract has no bfloat16 and ONNX Runtime's CPU provider no bfloat16
Conv, so it is the one runtime here that executes bfloat16 exports.

Usage: python scripts/reference_evaluator.py MODEL.onnx INPUTS.npz OUTPUTS.npz
Feeds the arrays of INPUTS.npz named like graph inputs (others are ignored) and writes every graph
output, converted to float32, under its output name.
"""
import sys

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator


def main(model_path: str, inputs_path: str, outputs_path: str) -> None:
    model = onnx.load(model_path)
    wanted = {i.name for i in model.graph.input}
    with np.load(inputs_path) as stored:
        inputs = {name: stored[name] for name in stored.files if name in wanted}
    names = [output.name for output in model.graph.output]
    values = ReferenceEvaluator(model).run(None, inputs)
    np.savez(outputs_path, **{n: np.asarray(v).astype(np.float32) for n, v in zip(names, values)})


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: reference_evaluator.py MODEL.onnx INPUTS.npz OUTPUTS.npz")
    main(*sys.argv[1:])
