"""Serve an explanation with ONNX Runtime: run a model compiled by mambalrp-compile and print each
token with its relevance, most relevant first.

Usage:
    python examples/python_onnxruntime.py MODEL_LRP.onnx [--tokens 5,17,3,...]

Without --tokens, deterministic token ids are used. Needs only `onnxruntime` and `numpy`.
"""
import argparse

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--tokens", help="comma-separated token ids for one sequence (repeated over the batch)")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    ids_input = session.get_inputs()[0]
    batch, seq = ids_input.shape  # exported Mamba graphs have static shapes
    if args.tokens:
        row = np.array([int(t) for t in args.tokens.split(",")], dtype=np.int64)
        if row.size != seq:
            raise SystemExit(f"the model takes exactly {seq} tokens, got {row.size}")
        ids = np.tile(row, (batch, 1))
    else:
        ids = ((np.arange(batch * seq) * 7 + 3) % 50).reshape(batch, seq).astype(np.int64)

    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {ids_input.name: ids})))
    relevance, logit, bias = values["relevance"], values["relevance_target_logit"], values["relevance_bias"]
    target = values[names[0]][:, -1, :].argmax(axis=-1)

    for b in range(batch):
        total = relevance[b].sum()
        print(f"sample {b}: explained class {target[b]}, logit {logit[b]:.4f} "
              f"= sum(relevance) {total:.4f} + bias {bias[b]:.4f}")
        for position in np.argsort(-relevance[b]):
            print(f"  position {position:3d}  token {ids[b, position]:6d}  relevance {relevance[b, position]:+.5f}")


if __name__ == "__main__":
    main()
