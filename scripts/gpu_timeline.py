"""Where one explanation's time goes on the GPU: the device's own kernel timeline of one run of a
compiled model in ONNX Runtime's CUDA provider, next to the run's wall time.

    python3 scripts/gpu_timeline.py MODEL.onnx [--case 1x2048] [--runs 5] [--out FILE.json]
        [--graph-opt all|preoptimized] [--mem-reuse on|off]

ONNX Runtime's own profiler times each node on the host: on the CUDA provider that is the
kernel's launch, not its run. This records the kernels themselves, through CUPTI as PyTorch's
profiler drives it (it traces every kernel and copy in the process, ONNX Runtime's included).
Reported, for one run after a warm-up:
 - wall time with outputs fetched to the host (as gpu_bench.py times it) and with outputs left
   on the GPU (I/O binding): the difference is the copy of the outputs;
 - GPU busy time (the union of kernel and copy intervals) and idle time within the run: idle
   time is the device waiting for the host (launch overhead);
 - kernel time by op (the name ONNX Runtime's CUDA kernels carry) and by duration class, with
   counts; copies by direction; the slowest kernels, and with --list every kernel of the ops
   named (duration, grid, block), in run order.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gpu_bench import time_bound  # noqa: E402

# Kernel duration classes (µs): at 2048 tokens a state-sized op of the 130M model
# ([1, 1536, 2048, 16] float32, 201 MB) takes 120-600 µs, a [1, 2048, 1536] one about 10 µs.
CLASSES = [(100.0, ">=100 us"), (20.0, "20-100 us"), (5.0, "5-20 us"), (0.0, "<5 us")]


def kernel_family(name):
    """A short name for a CUDA kernel: ONNX Runtime's op functor (OP_Mul, ...) or the kernel's
    function name without namespaces and template arguments."""
    op = re.search(r"\bOP_(\w+?)<", name) or re.search(r"\bOP_(\w+)\b", name)
    if op:
        return op.group(1)
    for word in ("gemm", "gemv", "cutlass", "Reduce", "reduce", "CumSum", "Transpose", "Concat", "Slice",
                 "Pad", "Expand", "Gather", "Softmax", "Cast", "Where", "Scan", "Unary", "Binary"):
        if word in name:
            return word.lower()
    head = name.split("(")[0]
    head = re.sub(r"<.*", "", head).split("::")[-1]
    return head.split()[-1] if head.split() else name[:40]


def union_length(intervals):
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--case", default="1x2048")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tf32", type=int, choices=[0, 1], default=0)
    p.add_argument("--vocab", type=int, default=50280)
    p.add_argument("--out")
    p.add_argument("--graph-opt", choices=["all", "preoptimized"], default="all")
    p.add_argument("--mem-reuse", choices=["on", "off"], default="on")
    p.add_argument("--list", nargs="*", default=[], metavar="OP",
                   help="also list every kernel of these ops (as by_op names them), in run order")
    args = p.parse_args()
    import numpy as np
    import torch  # CUPTI through PyTorch's profiler (loaded before ONNX Runtime's CUDA libraries)
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    batch, seq = (int(v) for v in args.case.split("x"))
    cuda = ("CUDAExecutionProvider", {"use_tf32": str(args.tf32), "arena_extend_strategy": "kSameAsRequested"})
    path = args.model
    if args.graph_opt == "preoptimized":
        path = os.path.join(tempfile.mkdtemp(), "optimized.onnx")
        once = ort.SessionOptions()
        once.enable_mem_reuse = False
        once.optimized_model_filepath = path
        ort.InferenceSession(args.model, once, providers=[cuda, "CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.enable_mem_reuse = args.mem_reuse == "on"
    if args.graph_opt == "preoptimized":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    t = time.perf_counter()
    sess = ort.InferenceSession(path, options, providers=[cuda, "CPUExecutionProvider"])
    created = time.perf_counter() - t
    ids = np.random.default_rng(seq + batch).integers(0, args.vocab, (batch, seq), dtype=np.int64)
    feed = {"input_ids": ids}

    outputs = sess.run(None, feed)
    host = []
    for _ in range(args.runs):
        t = time.perf_counter()
        sess.run(None, feed)
        host.append(time.perf_counter() - t)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(ids, "cuda", 0))
    for out, value in zip(sess.get_outputs(), outputs):
        binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_shape_and_type(
            value.shape, value.dtype, "cuda", 0))
    bound = time_bound(sess, binding, args.runs)

    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        sess.run(None, feed)
        wall = time.perf_counter() - t
    trace = os.path.join(tempfile.mkdtemp(), "trace.json")
    prof.export_chrome_trace(trace)
    events = json.load(open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    copies = [e for e in events if e.get("cat") in ("gpu_memcpy", "gpu_memset") and "dur" in e]
    busy = union_length([(e["ts"], e["ts"] + e["dur"]) for e in kernels + copies])
    span = (max(e["ts"] + e["dur"] for e in kernels + copies) - min(e["ts"] for e in kernels + copies)) \
        if kernels else 0.0
    by_family = collections.defaultdict(lambda: [0, 0.0])
    by_class = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        family = kernel_family(e["name"])
        by_family[family][0] += 1
        by_family[family][1] += e["dur"]
        label = next(label for floor, label in CLASSES if e["dur"] >= floor)
        by_class[label][0] += 1
        by_class[label][1] += e["dur"]
    by_copy = collections.defaultdict(lambda: [0, 0.0])
    for e in copies:
        by_copy[e["name"]][0] += 1
        by_copy[e["name"]][1] += e["dur"]
    ms = lambda us: round(us / 1e3, 3)  # noqa: E731
    kernels.sort(key=lambda e: e["ts"])
    listed = {op: [dict(us=round(e["dur"], 1), grid=e.get("args", {}).get("grid"),
                        block=e.get("args", {}).get("block"), name=e["name"][:160])
                   for e in kernels if kernel_family(e["name"]) == op] for op in args.list}
    result = dict(
        model=os.path.basename(args.model), case=args.case, tf32=args.tf32, session_s=round(created, 2),
        host_io_median_ms=round(statistics.median(host) * 1e3, 2), device_io_median_ms=round(bound * 1e3, 2),
        profiled_run_ms=round(wall * 1e3, 2), kernels=len(kernels), kernel_ms=ms(sum(e["dur"] for e in kernels)),
        gpu_busy_ms=ms(busy), gpu_span_ms=ms(span), gpu_idle_in_span_ms=ms(span - busy),
        by_class={k: dict(kernels=v[0], ms=ms(v[1])) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1][1])},
        by_op={k: dict(kernels=v[0], ms=ms(v[1])) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1][1])[:30]},
        copies={k: dict(count=v[0], ms=ms(v[1])) for k, v in by_copy.items()},
        slowest=[dict(us=round(e["dur"], 1), grid=e.get("args", {}).get("grid"), name=e["name"][:160])
                 for e in sorted(kernels, key=lambda e: -e["dur"])[:40]],
        listed=listed,
    )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
