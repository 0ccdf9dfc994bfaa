"""What one full-size op costs on the GPU: the ops the parallel scan form runs over
[B, D, K, L, N] tensors, each alone in a one-node ONNX model, timed in ONNX Runtime's CUDA
provider with inputs and outputs bound on the GPU (median of --runs after a warm-up).

    python3 scripts/gpu_op_costs.py [--shape 1 1536 256 8 16] [--runs 20] [--out FILE.json]

With the counts of such ops per layer in a compiled model (README, GPU section) this says how
much of an explanation's time is device work on state-sized tensors and how much is the rest:
ONNX Runtime's CUDA kernels are not fused, so each op reads and writes its whole tensor.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from gpu_bench import time_bound


def model(op, operands, attrs):
    """A one-node model: `operands` in order, (name, array or None); None is the graph input
    x (numpy arrays become initializers)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
              for name, shape in operands if isinstance(shape, tuple)]
    inits = [onnx.numpy_helper.from_array(v, name) for name, v in operands if isinstance(v, np.ndarray)]
    node = helper.make_node(op, [name for name, _ in operands], ["y"], **attrs)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], op, inputs, [out], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def time_model(blob, inputs, runs, device):
    import onnxruntime as ort

    providers = [("CUDAExecutionProvider", {"use_tf32": "0"})] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(blob, providers=providers)
    binding = sess.io_binding()
    for name, array in inputs.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    binding.bind_output("y", device)
    return time_bound(sess, binding, runs) * 1e3


def main():
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    p = argparse.ArgumentParser()
    p.add_argument("--shape", nargs=5, type=int, default=[1, 1536, 256, 8, 16])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = p.parse_args()
    b, d, k, l, n = args.shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.shape).astype(np.float32)
    y = rng.standard_normal(args.shape).astype(np.float32)
    per_channel = rng.standard_normal([b, d, k, l, 1]).astype(np.float32)
    per_step = rng.standard_normal([b, 1, k, l, n]).astype(np.float32)
    i64 = lambda *v: np.array(v, np.int64)
    tri = np.tril(np.ones((l, l), np.float32))
    full = tuple(args.shape)
    # The same elements with L last: [B, D, K, N, L].
    x_steps_last = np.ascontiguousarray(x.transpose(0, 1, 2, 4, 3))
    arrays = {"x": x, "other": y, "per_channel": per_channel, "per_step": per_step,
              "x_steps_last": x_steps_last}
    X = ("x", full)
    XT = ("x_steps_last", x_steps_last.shape)
    last_step = rng.standard_normal([b, d, k, 1, n]).astype(np.float32)
    per_token = rng.standard_normal([b, d, k * l, 1]).astype(np.float32)
    arrays.update(last_step=last_step, per_token=per_token)
    cases = {
        "Pad [B,D,K,1,N] -> L steps (the last one)": ("Pad", [("last_step", last_step.shape),
                                                              ("pads", i64(0, 0, 0, l - 1, 0, 0, 0, 0, 0, 0))], {}),
        "Pad [B,D,T,1] by one chunk of steps": ("Pad", [("per_token", per_token.shape),
                                                       ("pads", i64(0, 0, 0, 0, 0, 0, l, 0))], {}),
        "Expand [B,D,K,1,N] over L": ("Expand", [("last_step", last_step.shape), ("shape", i64(*full))], {}),
        "Add [B,D,K,L,N] + [B,D,K,1,N] (broadcast)": ("Add", [X, ("last_step", last_step.shape)], {}),
        "Add (same shape)": ("Add", [X, ("other", full)], {}),
        "Mul (same shape)": ("Mul", [X, ("other", full)], {}),
        "Mul (by [B,D,K,L,1])": ("Mul", [X, ("per_channel", per_channel.shape)], {}),
        "Mul (by [B,1,K,L,N])": ("Mul", [X, ("per_step", per_step.shape)], {}),
        "Div (same shape)": ("Div", [X, ("other", full)], {}),
        "Exp": ("Exp", [X], {}),
        "CumSum over L": ("CumSum", [X, ("axis", i64(3))], {}),
        "CumSum over L, reverse": ("CumSum", [X, ("axis", i64(3))], {"reverse": 1}),
        "MatMul tril[L,L] @ x (= CumSum over L)": ("MatMul", [("tri", tri), X], {}),
        "Pad (0 steps on K)": ("Pad", [X, ("pads", i64(*[0] * 10))], {}),
        "Slice (all of K)": ("Slice", [X, ("starts", i64(0)), ("ends", i64(k)), ("axes", i64(2))], {}),
        "ReduceSum over N": ("ReduceSum", [X, ("axes", i64(4))], {"keepdims": 0}),
        "MatMul x @ ones[N,1] (= ReduceSum over N)": ("MatMul", [X, ("ones", np.ones((n, 1), np.float32))], {}),
        "ReduceSum over L": ("ReduceSum", [X, ("axes", i64(3))], {"keepdims": 1}),
        "MatMul ones[1,L] @ x (= ReduceSum over L)": ("MatMul", [("ones_row", np.ones((1, l), np.float32)), X], {}),
        "Mul [B,D,K,L,1] by [B,1,K,L,N] (outer product)": ("Mul", [("per_channel", per_channel.shape),
                                                                     ("per_step", per_step.shape)], {}),
        "CumSum over L, L last ([B,D,K,N,L])": ("CumSum", [XT, ("axis", i64(4))], {}),
        "MatMul x[..,N,L] @ triu[L,L] (= CumSum over L, L last)": ("MatMul", [XT, ("triu", np.ascontiguousarray(tri.T))], {}),
        "ReduceSum over N, L last ([B,D,K,N,L])": ("ReduceSum", [XT, ("axes", i64(3))], {"keepdims": 1}),
        "Transpose (K and L swapped)": ("Transpose", [X], {"perm": [0, 1, 3, 2, 4]}),
    }
    results = {"shape": args.shape, "megabytes": x.nbytes / 1e6, "device": args.device, "ms": {}}
    for label, (op, operands, attrs) in cases.items():
        inputs = {name: arrays[name] for name, v in operands if isinstance(v, tuple)}
        try:
            ms = time_model(model(op, operands, attrs), inputs, args.runs, args.device)
            results["ms"][label] = round(ms, 3)
            print(f"{label}: {ms:.3f} ms")
        except Exception as e:  # an op the provider refuses: say so, go on
            results["ms"][label] = str(e).splitlines()[0][:200]
            print(f"{label}: failed: {results['ms'][label]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
