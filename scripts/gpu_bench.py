"""The GPU table: explanations of a Mamba-130M-shaped model in ONNX Runtime's CUDA provider.

Run on a machine with an NVIDIA GPU, torch, transformers (4.40 or 5.x) and onnxruntime-gpu,
from the repository root, with a release build of the compiler:

    python3 scripts/gpu_bench.py --compiler target/release/mambalrp-compile [--out DIR]
        [--forms parallel rolled] [--cases 1x128 1x512 1x2048 8x2048] [--runs 5]

What it does, in one process per step so that every figure is measured alone:
 1. builds the 130M-shaped Hugging Face model (random weights, models/export_bench.py's builder)
    and exports it with the TorchScript exporter at 16 tokens, batch 1;
 2. compiles it once per scan form (`--scan FORM --dynamic-seq --dynamic-batch --no-verify`;
    a form written `FORM+mbN`, e.g. `parallel+mb1`, adds `--micro-batch N`, `+maxN`
    `--max-seq-len N`);
 3. per form and TF32 setting (`use_tf32` 0 and 1 for the first form, 0 for the others):
    creates a CUDA session (timed; ONNX Runtime's warning when nodes fall
    back to the CPU is reported), then per case (batch x tokens) runs forward +
    relevance with every output fetched, one warm-up then the median of `--runs`; reports the
    conservation residual max|logit - sum(R) - R_bias| / max(|logit|, 1) and the GPU memory
    in use after the case (nvidia-smi; the arena grows by what is asked and never shrinks, and
    cases run from small to large, so the last figure is the peak);
 4. the PyTorch forward of the same model on the same GPU (all cases but the last) (Hugging Face's path without the
    CUDA kernels: the slow path), for the ratio.
With `--cuda-graph BxS`, the parallel form is also run with its input fixed at that shape (I/O
bound on the GPU), without and with ONNX Runtime's CUDA graph capture.
`--step fp16 --forms FORM --cases ...` compiles the float16 export too, as exported and with
`--precision float32`, and compares both with the float32 one: time per case and the relevance
error.
With `--profile BxS`, per form one more process runs that case with ONNX Runtime's profiler:
kernel time and node count per op type and provider (CPU fallbacks show as `@CPU`).
Writes DIR/gpu_bench.json and prints a Markdown table (README's GPU table).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "models"))


# The CUDA arena's growth: "same" (as requested) or ONNX Runtime's "default" (powers of two).
ARENA = "same"
# ONNX Runtime's enable_mem_reuse session option (--mem-reuse).
MEM_REUSE = True
# ONNX Runtime's graph optimisation for the session (--graph-opt): all, basic, none, or
# preoptimized (a copy optimised once at level all for this provider, loaded with none).
GRAPH_OPT = "all"


def log(*a):
    print(*a, flush=True)


def gpu_memory_mib():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])
    except Exception:  # no nvidia-smi (a CPU smoke run)
        return None


def export(out_dir, size, half=False):
    import torch
    import export_bench

    spec = export_bench.SIZES[size]
    model = export_bench.build_model(spec)
    ids = torch.randint(0, spec["vocab"], (1, 16), generator=torch.Generator().manual_seed(7))
    if half:  # float16 weights and arithmetic, traced on the GPU (the CPU lacks some half kernels)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, ids = model.half().to(device), ids.to(device)
    path = os.path.join(out_dir, f"{spec['prefix']}_dyn{'_fp16' if half else ''}.onnx")
    model.config.return_dict = False
    import transformers
    if int(transformers.__version__.split(".")[0]) >= 5:
        # 5.x's forward takes logits_to_keep, which the TorchScript exporter would turn into an
        # input selecting one position at run time (the compiler refuses such a graph).
        import types
        model.forward = types.MethodType(
            lambda self, input_ids: type(self).forward(self, input_ids=input_ids, use_cache=False,
                                                       return_dict=False), model)
    t = time.perf_counter()
    torch.onnx.export(model, (ids,), path, dynamo=False, opset_version=17, input_names=["input_ids"],
                      output_names=["logits"])
    log(f"exported {path} in {time.perf_counter() - t:.1f} s")
    return path


def form_args(form):
    """The compiler's flags for `form`: a scan form with optional suffixes: `+mbN` adds
    `--micro-batch N`, `+maxN` `--max-seq-len N`, `+keep` `--keep-forward-values` (e.g.
    parallel+mb1+max4096)."""
    scan, *suffixes = form.split("+")
    args = ["--scan", scan]
    for suffix in suffixes:
        if suffix.startswith("mb"):
            args += ["--micro-batch", suffix[2:]]
        elif suffix.startswith("max"):
            args += ["--max-seq-len", suffix[3:]]
        elif suffix == "keep":
            args += ["--keep-forward-values"]
        else:
            raise SystemExit(f"unknown form suffix +{suffix} in {form}")
    return args


def compile_form(compiler, model, form, out_dir):
    out = os.path.join(out_dir, f"lrp_{form.replace('+', '_')}.onnx")
    t = time.perf_counter()
    subprocess.run([compiler, model, "-o", out, *form_args(form), "--no-verify", "--dynamic-seq",
                    "--dynamic-batch"], check=True)
    return out, time.perf_counter() - t


def session(path, tf32, providers_wanted):
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    options = ort.SessionOptions()
    options.log_severity_level = 2  # warnings: ONNX Runtime says when nodes fall back to the CPU
    # With symbolic axes the allocation planner's search for reusable buffers is most of the
    # session's creation (52 of 53 s for the parallel form on the CPU); off, it takes 7 s.
    options.enable_mem_reuse = MEM_REUSE
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "preoptimized": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    options.graph_optimization_level = levels[GRAPH_OPT]
    providers = []
    if "CUDAExecutionProvider" in providers_wanted:
        # kSameAsRequested: the arena grows by what is asked, so the memory in use is the peak
        # (ONNX Runtime's default, kNextPowerOfTwo, can double it).
        cuda = {"use_tf32": str(int(tf32))}
        if ARENA == "same":
            cuda["arena_extend_strategy"] = "kSameAsRequested"
        providers.append(("CUDAExecutionProvider", cuda))
    providers.append("CPUExecutionProvider")
    if GRAPH_OPT == "preoptimized":
        # Optimised once for these providers (untimed: a deployment step), then loaded as is.
        optimized = path.replace(".onnx", "_optimized.onnx")
        if not os.path.exists(optimized):
            once = ort.SessionOptions()
            once.enable_mem_reuse = False
            once.optimized_model_filepath = optimized
            t = time.perf_counter()
            ort.InferenceSession(path, once, providers=providers)
            log(f"  optimised {os.path.basename(path)} once in {time.perf_counter() - t:.1f} s")
        path = optimized
    t = time.perf_counter()
    s = ort.InferenceSession(path, options, providers=providers)
    return s, time.perf_counter() - t


def profile(path, tf32, batch, seq, vocab):
    """One profiled run (after a warm-up): kernel time and node count per op type and provider."""
    import collections
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(os.path.dirname(path), "profile")
    providers = [("CUDAExecutionProvider", {"use_tf32": str(int(tf32))}), "CPUExecutionProvider"]
    sess = ort.InferenceSession(path, options, providers=providers)
    feed = {"input_ids": np.random.default_rng(seq + batch).integers(0, vocab, (batch, seq), dtype=np.int64)}
    sess.run(None, feed)
    sess.run(None, feed)
    events = json.load(open(sess.end_profiling()))
    runs = [e for e in events if e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and runs and e["ts"] >= runs[-1]["ts"]]
    by_op = collections.defaultdict(lambda: [0, 0.0])
    for e in nodes:
        key = f"{e['args'].get('op_name')}@{e['args'].get('provider', '?').replace('ExecutionProvider', '')}"
        by_op[key][0] += 1
        by_op[key][1] += e["dur"] / 1e3
    top = sorted(by_op.items(), key=lambda kv: -kv[1][1])
    return dict(case=f"{batch}x{seq}", run_ms=runs[-1]["dur"] / 1e3 if runs else None,
                kernels=len(nodes), kernel_ms=sum(v[1] for v in by_op.values()),
                by_op={k: dict(nodes=v[0], ms=round(v[1], 3)) for k, v in top[:25]})


def static_copy(path, batch, seq):
    """The compiled model with its input's axes fixed at batch x seq (ONNX Runtime then folds the
    shape arithmetic, which CUDA graph capture needs)."""
    import onnx

    model = onnx.load(path)
    for vi in model.graph.input:
        if vi.name == "input_ids":
            dims = vi.type.tensor_type.shape.dim
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
            dims[1].ClearField("dim_param")
            dims[1].dim_value = seq
    out = path.replace(".onnx", f"_static_{batch}x{seq}.onnx")
    onnx.save(model, out)
    return out


def time_bound(sess, binding, runs):
    """Median seconds of `runs` runs with inputs and outputs bound on the device, after one
    warm-up run."""
    sess.run_with_iobinding(binding)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_device_outputs(sess, ids, outputs, runs):
    """Median seconds per run with the input and outputs bound to GPU buffers (`bound_s`), and
    with the outputs then copied into page-locked host buffers (`pinned_s`): what a server that
    keeps its buffers pays, against `sess.run`'s copies into pageable numpy arrays."""
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
    names = [o.name for o in sess.get_outputs()]
    device = [torch.empty(v.shape, dtype=dtypes[str(v.dtype)], device="cuda") for v in outputs]
    host = [torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for v in device]
    ids_gpu = torch.from_numpy(ids).to("cuda")
    binding = sess.io_binding()
    binding.bind_input("input_ids", "cuda", 0, ids.dtype, list(ids.shape), ids_gpu.data_ptr())
    for name, value, numpy in zip(names, device, outputs):
        binding.bind_output(name, "cuda", 0, numpy.dtype, list(numpy.shape), value.data_ptr())
    torch.cuda.synchronize()
    bound = time_bound(sess, binding, runs)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        for h, d in zip(host, device):
            h.copy_(d, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return dict(bound_s=bound, pinned_s=statistics.median(times))


def cuda_graph(path, batch, seq, runs, vocab):
    """The static-shape copy, timed with I/O bound on the GPU, without and with CUDA graphs."""
    import numpy as np
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    static = static_copy(path, batch, seq)
    ids = np.random.default_rng(seq + batch).integers(0, vocab, (batch, seq), dtype=np.int64)
    rows = {}
    for graph in (0, 1):
        options = {"use_tf32": "0", "enable_cuda_graph": str(graph)}
        t = time.perf_counter()
        try:
            sess = ort.InferenceSession(static, ort.SessionOptions(),
                                        providers=[("CUDAExecutionProvider", options), "CPUExecutionProvider"])
            created = time.perf_counter() - t
            shapes = [(o.name, o.shape, o.type) for o in sess.get_outputs()]
            plain = ort.InferenceSession(static, providers=["CUDAExecutionProvider"]) if graph else sess
            first = plain.run(None, {"input_ids": ids})
            binding = sess.io_binding()
            binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(ids, "cuda", 0))
            for (name, _, _), value in zip(shapes, first):
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_shape_and_type(
                    value.shape, value.dtype, "cuda", 0))
            # The warm-up captures the graph when enabled.
            rows[f"cuda_graph_{graph}"] = dict(session_s=created, median_s=time_bound(sess, binding, runs))
            log(f"  static {batch}x{seq}, CUDA graph {graph}: session {created:.1f} s, "
                f"median {rows[f'cuda_graph_{graph}']['median_s'] * 1e3:.1f} ms")
        except Exception as e:
            rows[f"cuda_graph_{graph}"] = dict(error=str(e).splitlines()[0][:300])
            log(f"  static {batch}x{seq}, CUDA graph {graph}: failed: {rows[f'cuda_graph_{graph}']['error']}")
    return rows


def relative_error(ours, reference):
    """max over samples of max |ours - reference| / max |reference| (per sample)."""
    import numpy as np

    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float((np.abs(ours - reference).max(-1) / np.abs(reference).max(-1)).max())


def torch_relevance(size, ids, target):
    """MambaLRP relevance of `target` in PyTorch on the GPU, float32 and float16 weights."""
    import torch
    import export_bench
    import mamba_lrp

    spec = export_bench.SIZES[size]
    result = {}
    for half in (False, True):
        model = export_bench.build_model(spec).to("cuda")
        if half:
            model = model.half()
        ids_t = torch.from_numpy(ids).to("cuda")
        target_t = torch.from_numpy(target).to("cuda")
        out = mamba_lrp.relevance(model, ids_t, target=target_t)
        result[half] = out["relevance"].float().cpu().numpy()
        del model
        torch.cuda.empty_cache()
    return result


# The float16 comparison's models: (name, half-precision export, compiler flags).
FP16_VARIANTS = [
    ("fp32", False, []),
    ("fp16", True, []),
    ("fp16_widened", True, ["--precision", "float32"]),
]


def fp16_compare(compiler, out_dir, size, form, cases, runs, vocab):
    """The float16 export compiled as `form`, as exported and with `--precision float32`,
    against the float32 one: time per case and the relevance error, max |R - R32| / max |R32|
    per sample (relevance outputs are float32), all explaining the float32 model's argmax
    (whether the float16 argmax agrees is reported)."""
    import numpy as np
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    compiled = {}
    for name, half, flags in FP16_VARIANTS:
        model = export(out_dir, size, half)
        out = os.path.join(out_dir, f"lrp_{form.replace('+', '_')}_{name}.onnx")
        # One explained class for all (fed as lrp_target): the argmax may differ between them.
        subprocess.run([compiler, model, "-o", out, *form_args(form), "--no-verify", "--dynamic-seq",
                        "--dynamic-batch", "--target", "input", *flags], check=True)
        compiled[name], _ = session(out, 0, ["CUDAExecutionProvider"])
    rows = []
    for batch, seq in cases:
        ids = np.random.default_rng(seq + batch).integers(0, vocab, (batch, seq), dtype=np.int64)
        row = dict(batch=batch, seq=seq)
        argmax = {}
        for name, sess in compiled.items():  # each model's own argmax at the last position
            logits = sess.run(["logits"], {"input_ids": ids, "lrp_target": np.zeros(batch, np.int64)})[0]
            argmax[name] = logits[:, -1].astype(np.float32).argmax(-1).astype(np.int64)
        row["argmax_agrees"] = bool((argmax["fp32"] == argmax["fp16"]).all())
        row["widened_argmax_agrees"] = bool((argmax["fp32"] == argmax["fp16_widened"]).all())
        feed = {"input_ids": ids, "lrp_target": argmax["fp32"]}
        named = {}
        for name, sess in compiled.items():
            outputs = sess.run(None, feed)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                outputs = sess.run(None, feed)
                times.append(time.perf_counter() - t)
            named[name] = dict(zip([o.name for o in sess.get_outputs()], outputs))
            row[f"{name}_median_s"] = statistics.median(times)
        r32, r16, rw = (named[n]["relevance"] for n in ("fp32", "fp16", "fp16_widened"))
        row["relevance_dtype"] = str(r16.dtype)
        row["relative_error"] = relative_error(r16, r32)
        row["widened_relative_error"] = relative_error(rw, r32)
        row["widened_logits_dtype"] = str(named["fp16_widened"]["logits"].dtype)
        # The same comparison in PyTorch (models/mamba_lrp.py, the rules as detaches, same
        # weights, ids and target): how far float16 arithmetic itself moves MambaLRP, and how
        # far the compiled float16 model is from PyTorch's float16 MambaLRP.
        try:
            torch_rel = torch_relevance(size, ids, argmax["fp32"])
            row["torch_fp16_vs_fp32"] = relative_error(torch_rel[True], torch_rel[False])
            row["compiled_fp16_vs_torch_fp16"] = relative_error(r16, torch_rel[True])
            row["compiled_fp32_vs_torch_fp32"] = relative_error(r32, torch_rel[False])
            row["compiled_widened_vs_torch_fp32"] = relative_error(rw, torch_rel[False])
            log(f"  PyTorch MambaLRP fp16 vs fp32: {row['torch_fp16_vs_fp32']:.1e}; compiled fp16 vs "
                f"PyTorch fp16: {row['compiled_fp16_vs_torch_fp16']:.1e}; compiled fp32 vs PyTorch fp32: "
                f"{row['compiled_fp32_vs_torch_fp32']:.1e}; compiled fp16 --precision float32 vs "
                f"PyTorch fp32: {row['compiled_widened_vs_torch_fp32']:.1e}")
        except Exception as e:  # the ONNX Runtime figures stand without it
            row["torch_error"] = str(e).splitlines()[0][:300]
            log(f"  PyTorch comparison failed: {row['torch_error']}")
        rows.append(row)
        log(f"  {form} fp16 {batch}x{seq}: {row['fp16_median_s'] * 1e3:.1f} ms, --precision float32 "
            f"{row['fp16_widened_median_s'] * 1e3:.1f} ms (fp32 {row['fp32_median_s'] * 1e3:.1f} ms), "
            f"relevance {row['relevance_dtype']}, error vs fp32 {row['relative_error']:.1e}, with "
            f"--precision float32 {row['widened_relative_error']:.1e} (the fp32 argmax explained in all; "
            f"fp16 argmax {'agrees' if row['argmax_agrees'] else 'differs'}, widened "
            f"{'agrees' if row['widened_argmax_agrees'] else 'differs'})")
    return dict(form=form, cases=rows)


def run_cases(path, tf32, cases, runs, vocab):
    import numpy as np
    import onnxruntime as ort

    available = ort.get_available_providers()
    sess, created = session(path, tf32, available)
    rows = []
    for batch, seq in cases:
        ids = np.random.default_rng(seq + batch).integers(0, vocab, (batch, seq), dtype=np.int64)
        feed = {"input_ids": ids}
        try:
            outputs = sess.run(None, feed)  # warm-up
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                outputs = sess.run(None, feed)
                times.append(time.perf_counter() - t)
        except Exception as e:  # out of memory, say: reported, not fatal
            rows.append(dict(batch=batch, seq=seq, error=str(e).splitlines()[0][:300]))
            log(f"  {batch}x{seq}: failed: {rows[-1]['error']}")
            continue
        named = dict(zip([o.name for o in sess.get_outputs()], outputs))
        logit = named["relevance_target_logit"].astype(np.float64)
        total = named["relevance"].astype(np.float64).sum(-1) + named["relevance_bias"].astype(np.float64)
        residual = float((np.abs(logit - total) / np.maximum(np.abs(logit), 1.0)).max())
        row = dict(batch=batch, seq=seq, median_s=statistics.median(times), min_s=min(times),
                   residual=residual, gpu_mib=gpu_memory_mib())
        try:
            row.update(time_device_outputs(sess, ids, outputs, runs))
        except Exception as e:  # torch without CUDA, say: the fetched figure stands alone
            row["device_outputs_error"] = str(e).splitlines()[0][:300]
        rows.append(row)
        log(f"  {batch}x{seq}: median {row['median_s'] * 1e3:.1f} ms, residual {residual:.1e}, "
            f"GPU memory in use {row['gpu_mib']} MiB; outputs left on the GPU "
            f"{row.get('bound_s', float('nan')) * 1e3:.1f} ms, copied to pinned host memory "
            f"{row.get('pinned_s', float('nan')) * 1e3:.1f} ms")
    return dict(session_s=created, providers=sess.get_providers(), cases=rows)


def torch_forward(size, cases, runs):
    import torch
    import export_bench

    spec = export_bench.SIZES[size]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = export_bench.build_model(spec).to(device)
    rows = []
    with torch.no_grad():
        for batch, seq in cases:
            ids = torch.randint(0, spec["vocab"], (batch, seq), device=device)
            model(ids)
            times = []
            for _ in range(runs):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model(ids)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            rows.append(dict(batch=batch, seq=seq, median_s=statistics.median(times)))
            log(f"  torch forward {batch}x{seq}: {rows[-1]['median_s'] * 1e3:.1f} ms")
    # MambaLRP in PyTorch (models/mamba_lrp.py: the rules as detaches, forward + autograd, as
    # the official code computes it), the explained class fixed so no extra forward is timed.
    import mamba_lrp

    for row in rows:
        ids = torch.randint(0, spec["vocab"], (row["batch"], row["seq"]), device=device)
        target = torch.zeros(row["batch"], dtype=torch.int64, device=device)
        try:
            times = []
            for _ in range(1 + min(runs, 3)):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                mamba_lrp.relevance(model, ids, target=target)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            row["mambalrp_median_s"] = statistics.median(times[1:])
            log(f"  torch MambaLRP {row['batch']}x{row['seq']}: {row['mambalrp_median_s'] * 1e3:.1f} ms")
        except torch.cuda.OutOfMemoryError as e:
            row["mambalrp_error"] = str(e).splitlines()[0][:200]
            torch.cuda.empty_cache()
    return dict(device=device, torch=torch.__version__, cases=rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compiler", required=True)
    p.add_argument("--out", default="gpu_bench_out")
    p.add_argument("--size", default="130m")
    p.add_argument("--forms", nargs="+", default=["parallel", "rolled"])
    p.add_argument("--cases", nargs="+", default=["1x128", "1x512", "1x2048", "8x2048"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--step", choices=["all", "ort", "torch", "profile", "cudagraph", "fp16"], default="all",
                   help="fp16: only the float16 export against the float32 one (first of --forms)")
    p.add_argument("--cuda-graph", nargs="+", help="cases (BxS): the parallel form with its input fixed "
                   "at each shape, timed without and with ONNX Runtime's CUDA graph capture")
    p.add_argument("--profile", help="a case (BxS) to profile per form: kernel time per op and provider")
    p.add_argument("--model", help="an export to use instead of exporting (step ort)")
    p.add_argument("--tf32", type=int, choices=[0, 1])
    p.add_argument("--timeout", type=int, default=300, help="seconds per measuring process")
    p.add_argument("--mem-reuse", choices=["on", "off"], default="on",
                   help="ONNX Runtime's enable_mem_reuse; off creates a session with symbolic axes "
                        "in a fraction of the time")
    p.add_argument("--graph-opt", choices=["all", "basic", "none", "preoptimized"], default="all",
                   help="ONNX Runtime's graph optimisation level for the session; preoptimized: a copy "
                        "optimised once at level all, loaded with none")
    p.add_argument("--arena", choices=["same", "default"], default="same",
                   help="the CUDA arena's growth: as requested (memory in use = peak) or ONNX Runtime's default")
    args = p.parse_args()
    global ARENA, MEM_REUSE, GRAPH_OPT
    ARENA = args.arena
    GRAPH_OPT = args.graph_opt
    MEM_REUSE = args.mem_reuse == "on"
    cases = [tuple(int(v) for v in c.split("x")) for c in args.cases]
    os.makedirs(args.out, exist_ok=True)
    import export_bench

    vocab = export_bench.SIZES[args.size]["vocab"]
    if args.step == "fp16":
        print(json.dumps(fp16_compare(args.compiler, args.out, args.size, args.forms[0], cases, args.runs,
                                      vocab)), file=open(os.path.join(args.out, "fp16.json"), "w"))
        return
    if args.step == "cudagraph":
        rows = {f"{b}x{s}": cuda_graph(args.model, b, s, args.runs, vocab) for b, s in cases}
        print(json.dumps(rows), file=open(
            os.path.join(args.out, f"cudagraph_{os.path.basename(args.model)}.json"), "w"))
        return
    if args.step == "profile":
        batch, seq = cases[0]
        print(json.dumps(profile(args.model, args.tf32 or 0, batch, seq, vocab), indent=1), file=open(
            os.path.join(args.out, f"profile_{os.path.basename(args.model)}.json"), "w"))
        return
    if args.step == "ort":  # one form and TF32 setting, in its own process
        print(json.dumps(run_cases(args.model, args.tf32, cases, args.runs, vocab)), file=open(
            os.path.join(args.out, f"ort_{os.path.basename(args.model)}_{args.tf32}.json"), "w"))
        return
    if args.step == "torch":
        print(json.dumps(torch_forward(args.size, cases, args.runs)),
              file=open(os.path.join(args.out, "torch.json"), "w"))
        return
    results = dict(date=time.strftime("%Y-%m-%d"), arena=args.arena, forms={})
    try:
        import onnxruntime
        results["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        results["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        results["gpu"] = "none (CPU)"
    model = export(args.out, args.size)
    for i, form in enumerate(args.forms):
        compiled, seconds = compile_form(args.compiler, model, form, args.out)
        results["forms"][form] = dict(compile_s=seconds, tf32={})
        # The first form with TF32 off and on; the others (baselines) off.
        settings = (0, 1) if i == 0 else (0,)
        form_cases = args.cases
        for tf32 in settings:
            log(f"{form}, use_tf32={tf32}:")
            errors = os.path.join(args.out, f"ort_{form}_{tf32}.log")
            with open(errors, "w") as err:
                done = subprocess.run([sys.executable, __file__, "--compiler", args.compiler, "--out", args.out, "--arena", args.arena, "--mem-reuse", args.mem_reuse, "--graph-opt", args.graph_opt,
                                       "--size", args.size, "--step", "ort", "--model", compiled, "--tf32",
                                       str(tf32), "--runs", str(args.runs), "--cases", *form_cases],
                                      stderr=err, timeout=args.timeout)
            with open(errors) as f:
                text = f.read()
            fallback = [line for line in text.splitlines() if "not assigned to the preferred" in line]
            log(f"  CPU fallback: {fallback[0] if fallback else 'none reported'}")
            if done.returncode != 0:
                log(text[-2000:])
                continue
            with open(os.path.join(args.out, f"ort_{os.path.basename(compiled)}_{tf32}.json")) as f:
                results["forms"][form]["tf32"][tf32] = dict(json.load(f), cpu_fallback=fallback)
        if args.profile:
            log(f"{form}: profiling {args.profile}")
            done = subprocess.run([sys.executable, __file__, "--compiler", args.compiler, "--out", args.out, "--arena", args.arena, "--mem-reuse", args.mem_reuse, "--graph-opt", args.graph_opt,
                                   "--size", args.size, "--step", "profile", "--model", compiled, "--tf32", "0",
                                   "--cases", args.profile], timeout=args.timeout)
            name = os.path.join(args.out, f"profile_{os.path.basename(compiled)}.json")
            if done.returncode == 0 and os.path.exists(name):
                results["forms"][form]["profile"] = json.load(open(name))
                prof = results["forms"][form]["profile"]
                log(f"  run {prof['run_ms']:.1f} ms, {prof['kernels']} kernels, {prof['kernel_ms']:.1f} ms kernel time")
                for op, v in list(prof["by_op"].items())[:12]:
                    log(f"    {op}: {v['nodes']} nodes, {v['ms']:.1f} ms")
        # Graph capture refuses control flow: the micro-batched form is one Scan.
        if args.cuda_graph and form.startswith("parallel") and "+mb" not in form:
            log(f"{form}: static shapes {args.cuda_graph}, CUDA graph capture")
            subprocess.run([sys.executable, __file__, "--compiler", args.compiler, "--out", args.out, "--arena", args.arena, "--mem-reuse", args.mem_reuse, "--graph-opt", args.graph_opt,
                            "--size", args.size, "--step", "cudagraph", "--model", compiled, "--runs",
                            str(args.runs), "--cases", *args.cuda_graph], timeout=args.timeout)
            name = os.path.join(args.out, f"cudagraph_{os.path.basename(compiled)}.json")
            if os.path.exists(name):
                results["forms"][form]["cuda_graph"] = json.load(open(name))
        os.remove(compiled)
    subprocess.run([sys.executable, __file__, "--compiler", args.compiler, "--out", args.out, "--arena", args.arena, "--mem-reuse", args.mem_reuse, "--graph-opt", args.graph_opt, "--size",
                    args.size, "--step", "torch", "--runs", str(args.runs), "--cases", *args.cases[:-1]],
                   check=True, timeout=args.timeout)
    with open(os.path.join(args.out, "torch.json")) as f:
        results["torch_forward"] = json.load(f)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    table(results, cases)


def table(results, cases):
    head = " | ".join(f"{b}x{s}" for b, s in cases)
    print(f"\n{results['gpu']}, onnxruntime {results.get('onnxruntime')}, {results['date']}\n")
    print(f"| form | TF32 | session | {head} | max residual |")
    print("|---|---|---|" + "---|" * len(cases) + "---|")
    for form, r in results["forms"].items():
        for tf32, o in r["tf32"].items():
            cells = []
            for c in o["cases"]:
                cell = "failed" if "error" in c else f"{c['median_s'] * 1e3:.1f} ms"
                if "pinned_s" in c:
                    cell += f" ({c['bound_s'] * 1e3:.1f} / {c['pinned_s'] * 1e3:.1f})"
                cells.append(cell)
            cells += ["-"] * (len(cases) - len(cells))
            residual = max((c.get("residual", 0) for c in o["cases"]), default=0)
            print(f"| {form} | {tf32} | {o['session_s']:.1f} s | " + " | ".join(cells) + f" | {residual:.1e} |")
    cells = [f"{c['median_s'] * 1e3:.1f} ms" for c in results["torch_forward"]["cases"]]
    cells += ["-"] * (len(cases) - len(cells))
    print("| PyTorch forward | - | - | " + " | ".join(cells) + " | - |")
    cells = [f"{c['mambalrp_median_s'] * 1e3:.1f} ms" if "mambalrp_median_s" in c else "failed"
             for c in results["torch_forward"]["cases"]]
    cells += ["-"] * (len(cases) - len(cells))
    print("| PyTorch MambaLRP (models/mamba_lrp.py) | - | - | " + " | ".join(cells) + " | - |")
    print("\n(in brackets: outputs left on the GPU / copied to pinned host memory)")


if __name__ == "__main__":
    main()
