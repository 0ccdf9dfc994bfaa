"""Vision Mamba on the GPU: the compiled model in ONNX Runtime's CUDA provider against our
PyTorch MambaLRP reference and the PyTorch forward, on a Vim-tiny-shaped model.

    PYTHONPATH=<onnxruntime-gpu site> python3 scripts/gpu_bench_vim.py --compiler PATH [--out DIR]

Builds models/vim.py's TinyVim at Vim-tiny's shape (224x224, patch 16, 197 tokens, d 192, 24
bidirectional blocks, 1000 classes; random weights, as models/export_vim_bench.py), exports it
(TorchScript, symbolic batch axis), compiles it with default options and --no-verify, and for
each batch size prints the median time of one explanation (all outputs fetched) with TF32 off,
the relevance error against PyTorch's MambaLRP on the same GPU (max |diff| / max |R|, pixels),
the conservation residual, and the PyTorch times (MambaLRP backward, plain forward). Writes
DIR/vim_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))


def log(*a):
    print(*a, flush=True)


def timed(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compiler", required=True)
    p.add_argument("--out", default="gpu_bench_vim_out")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    import numpy as np
    import torch
    import onnxruntime as ort
    from vim import TinyVim, VimConfig, explain, plain_logits

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    cfg = VimConfig(img_size=224, patch_size=16, d_model=192, d_state=16, n_layers=24,
                    n_classes=1000)
    model = TinyVim(cfg)
    path = os.path.join(args.out, "vim224_dyn.onnx")
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    t = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (image,), path, dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
    log(f"exported {path} in {time.perf_counter() - t:.1f} s")
    compiled = os.path.join(args.out, "vim224_lrp.onnx")
    t = time.perf_counter()
    subprocess.run([args.compiler, path, "-o", compiled, "--no-verify"], check=True)
    log(f"compiled in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    session = ort.InferenceSession(compiled, providers=[("CUDAExecutionProvider", {"use_tf32": "0"}),
                                                        "CPUExecutionProvider"])
    session_s = time.perf_counter() - t
    log(f"session {session_s:.1f} s, providers {session.get_providers()}")
    model = model.to("cuda")
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        feed = {"pixel_values": x.numpy()}
        names = [o.name for o in session.get_outputs()]
        ort_s = timed(lambda: session.run(None, feed), args.runs)
        out = dict(zip(names, session.run(None, feed)))
        xc = x.to("cuda")

        def reference():
            result = explain(model, xc)
            torch.cuda.synchronize()
            return result

        def forward():
            with torch.no_grad():
                plain_logits(model, xc)
            torch.cuda.synchronize()

        ref = reference()
        torch_lrp_s = timed(reference, args.runs)
        torch_fwd_s = timed(forward, args.runs)
        want = ref["relevance_pixels"].float().cpu().numpy()
        same_target = bool((ref["target"].cpu().numpy() == out["logits"].argmax(-1)).all())
        err = float(np.abs(out["relevance"] - want).max() / np.abs(want).max())
        residual = float((np.abs(out["relevance"].reshape(batch, -1).sum(1) + out["relevance_bias"]
                                 - out["relevance_target_logit"])
                          / np.abs(out["relevance_target_logit"])).max())
        row = dict(batch=batch, ort_cuda_s=ort_s, torch_mambalrp_s=torch_lrp_s, torch_forward_s=torch_fwd_s,
                   pixels_error_vs_torch=err, same_target=same_target, residual=residual)
        rows.append(row)
        log(f"batch {batch}: compiled on CUDA {ort_s * 1e3:.1f} ms; PyTorch MambaLRP {torch_lrp_s * 1e3:.1f} ms, "
            f"forward {torch_fwd_s * 1e3:.1f} ms; pixels vs PyTorch {err:.1e} (same target: {same_target}), "
            f"residual {residual:.1e}")
    with open(os.path.join(args.out, "vim_gpu.json"), "w") as f:
        json.dump(dict(session_s=session_s, torch=torch.__version__, onnxruntime=ort.__version__,
                       gpu=torch.cuda.get_device_name(), cases=rows), f, indent=1)


if __name__ == "__main__":
    main()
