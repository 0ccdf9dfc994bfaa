"""Export full-size (random-weight) Mamba ONNX graphs for benchmarking the compiler.

Command (from the repository root, after `bash models/setup.sh`; the machine is shared,
so run it niced):

    nice -n 10 models/.venv/bin/python models/export_bench.py [S ...] [--size 130m|1.4b]

    e.g. nice -n 10 models/.venv/bin/python models/export_bench.py 32
         nice -n 10 models/.venv/bin/python models/export_bench.py 32 128 512
         nice -n 10 models/.venv/bin/python models/export_bench.py 32 --size 1.4b

S are sequence lengths (default: 32 128 512). Output: ``models/bench/<model>_s<S>.onnx``
with ``<model>`` = ``mamba130m`` or ``mamba1.4b`` (the directory is git-ignored: the files
are large and never committed), plus a one-line JSON summary next to each model
(``<model>_s<S>.json``).

What it builds: a Hugging Face ``MambaForCausalLM`` with the shape of state-spaces/mamba-130m
(24 layers, d_model 768, d_state 16, vocab 50280, expand 2 -> d_inner 1536, d_conv 4,
dt_rank "auto" = ceil(768/16) = 48, conv bias on, no in/out-proj bias, tied embeddings,
use_cache False) or, with ``--size 1.4b``, of state-spaces/mamba-1.4b (48 layers, d_model
2048, dt_rank 128). No model hub is used: weights are random, every one drawn by our own
seeded init (``make_fixtures.explicit_init``: PyTorch's default schemes for Linear and Conv1d,
Mamba's for A, D and dt), so the model is the same bits under transformers 4.40 and 5.x (5.x's
own init makes it ill-conditioned); then the RMSNorm weights / A_log / D / dt_proj bias / conv
bias are perturbed a little (as in models/make_fixtures.py) so the model is not at the
structured init.

Export: TorchScript exporter (``torch.onnx.export(..., dynamo=False, opset_version=17)``),
HF slow path on CPU (the scan loop is unrolled, so the graph grows linearly in S), static
shapes, batch 1, input ``input_ids`` int64 [1, S], output ``logits`` float32 [1, S, vocab].
A model whose protobuf would exceed 2 GB (the 1.4B one) is written with external data: the
exporter's one-file-per-tensor output is merged into a single ``<model>_s<S>.onnx.data``
(page-aligned offsets) next to the ``.onnx``.

For each S it prints the export wall time, file size(s), node count / op histogram, and an
onnxruntime CPU check (session creation time, one forward's time, logits finite, max |diff|
against the PyTorch logits). ``--no-ort`` skips the check, ``--ort-threads`` sets
onnxruntime's intra-op threads (default 1).

Deterministic: same command -> same weights, same input ids, same graphs.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import resource
import shutil
import sys
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "bench")
TWO_GB = 2**31

SIZES = {
    # name prefix, layers, hidden, state, vocab, seed
    "130m": dict(prefix="mamba130m", layers=24, hidden=768, state=16, vocab=50280, seed=130),
    "1.4b": dict(prefix="mamba1.4b", layers=48, hidden=2048, state=16, vocab=50280, seed=1400),
}


def log(*a):
    print(" ".join(str(x) for x in a), flush=True)


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_model(spec):
    """The fixtures' builder (same perturbations), with dt_rank "auto" and tied embeddings."""
    import make_fixtures

    full = dict(spec, dt_rank=math.ceil(spec["hidden"] / 16), tied=True, conv_bias="random", xproj_scale=1.0,
                explicit_init=True)
    model = make_fixtures.build_model(full)
    assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    return model


BATCH = 1  # set from --batch


def stem(spec, seq):
    """File stem: mamba130m_s128, or mamba130m_s128_b8 for batch 8."""
    return f"{spec['prefix']}_s{seq}" + (f"_b{BATCH}" if BATCH != 1 else "")


def make_inputs(spec, seq):
    g = torch.Generator().manual_seed(spec["seed"] + 12345 + seq)
    return torch.randint(0, spec["vocab"], (BATCH, seq), generator=g, dtype=torch.int64)


def merge_external_data(tmp_dir, onnx_name, out_dir):
    """Rewrite the exporter's one-file-per-tensor external data as one page-aligned file.

    Initializers go to ``<onnx_name>.data`` (4096-aligned offsets); tensors held in node
    attributes (``Constant`` values: a few small ones) are put back inline as raw_data so
    that only initializers are external. Streams tensor by tensor (never holds all weights
    in memory). Returns (onnx_path, data_path).
    """
    import onnx

    m = onnx.load(os.path.join(tmp_dir, onnx_name), load_external_data=False)
    data_name = onnx_name + ".data"
    data_tmp = os.path.join(out_dir, data_name + ".tmp")
    align = 4096

    def read_blob(t):
        info = {e.key: e.value for e in t.external_data}
        with open(os.path.join(tmp_dir, info["location"]), "rb") as f:
            f.seek(int(info.get("offset", 0)))
            return f.read(int(info["length"])) if "length" in info else f.read()

    with open(data_tmp, "wb") as out:
        for t in m.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            blob = read_blob(t)
            del t.external_data[:]
            pos = out.tell()
            pad = (-pos) % align
            if pad:
                out.write(b"\0" * pad)
                pos += pad
            out.write(blob)
            for k, v in (("location", data_name), ("offset", str(pos)), ("length", str(len(blob)))):
                e = t.external_data.add()
                e.key, e.value = k, v
    for node in m.graph.node:  # attribute tensors (Constant values): inline them again
        for a in node.attribute:
            for t in [a.t] + list(a.tensors):
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    blob = read_blob(t)
                    del t.external_data[:]
                    t.data_location = onnx.TensorProto.DEFAULT
                    t.raw_data = blob
    for t in onnx.external_data_helper._get_all_tensors(m):  # nothing else may point elsewhere
        if t.data_location == onnx.TensorProto.EXTERNAL:
            assert {e.key: e.value for e in t.external_data}["location"] == data_name, t.name
    onnx_tmp = os.path.join(out_dir, onnx_name + ".tmp")
    onnx.save(m, onnx_tmp)
    data_path = os.path.join(out_dir, data_name)
    onnx_path = os.path.join(out_dir, onnx_name)
    os.replace(data_tmp, data_path)
    os.replace(onnx_tmp, onnx_path)
    return onnx_path, data_path


def export_one(model, spec, seq):
    name = f"{stem(spec, seq)}.onnx"
    tmp_dir = os.path.join(OUT, f".tmp_{stem(spec, seq)}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    ids = make_inputs(spec, seq)
    model.config.return_dict = False  # -> the model returns the tuple (logits,)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(model, (ids,), os.path.join(tmp_dir, name), dynamo=False,
                                  opset_version=17, input_names=["input_ids"],
                                  output_names=["logits"])
    finally:
        model.config.return_dict = True
    t_export = time.perf_counter() - t0
    files = sorted(os.listdir(tmp_dir))
    t1 = time.perf_counter()
    try:
        if files == [name]:
            onnx_path = os.path.join(OUT, name)
            os.replace(os.path.join(tmp_dir, name), onnx_path)
            data_path = None
        else:  # the exporter switched to external data (model > 2 GB)
            onnx_path, data_path = merge_external_data(tmp_dir, name, OUT)
    finally:
        shutil.rmtree(tmp_dir)
        for leftover in (name + ".data.tmp", name + ".tmp"):
            if os.path.exists(os.path.join(OUT, leftover)):
                os.remove(os.path.join(OUT, leftover))
    t_merge = time.perf_counter() - t1
    return ids, onnx_path, data_path, t_export, t_merge, len(files)


def graph_stats(onnx_path):
    import onnx

    m = onnx.load(onnx_path, load_external_data=False)
    g = m.graph
    hist = collections.Counter(n.op_type for n in g.node)

    def sig(v):
        tt = v.type.tensor_type
        return (v.name, onnx.TensorProto.DataType.Name(tt.elem_type),
                [d.dim_value or d.dim_param for d in tt.shape.dim])

    return dict(
        nodes=len(g.node), initializers=len(g.initializer),
        opset={o.domain or "ai.onnx": o.version for o in m.opset_import},
        inputs=[sig(v) for v in g.input], outputs=[sig(v) for v in g.output],
        ops=dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def ort_check(onnx_path, ids, ref_logits, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    t0 = time.perf_counter()
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    t_sess = time.perf_counter() - t0
    t1 = time.perf_counter()
    logits = sess.run(["logits"], {"input_ids": ids.numpy()})[0]
    t_run = time.perf_counter() - t1
    del sess
    res = dict(ort_session_s=round(t_sess, 2), ort_forward_s=round(t_run, 3),
               logits_shape=list(logits.shape), logits_finite=bool(np.isfinite(logits).all()))
    if ref_logits is not None:
        res["max_abs_diff_vs_torch"] = float(np.abs(logits - ref_logits).max())
        res["max_abs_torch_logit"] = float(np.abs(ref_logits).max())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("seqs", nargs="*", type=int, default=[32, 128, 512])
    ap.add_argument("--size", choices=sorted(SIZES), default="130m")
    ap.add_argument("--batch", type=int, default=1, help="static batch size of the export")
    ap.add_argument("--no-ort", action="store_true", help="skip the onnxruntime check")
    ap.add_argument("--ort-threads", type=int, default=1)
    ap.add_argument("--no-torch-ref", action="store_true",
                    help="skip the PyTorch forward used for the logits comparison")
    args = ap.parse_args()
    global BATCH
    BATCH = args.batch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    spec = SIZES[args.size]
    log(f"torch {torch.__version__}; building {spec['prefix']} "
        f"(layers={spec['layers']}, hidden={spec['hidden']}, state={spec['state']}, "
        f"vocab={spec['vocab']}, seed={spec['seed']})")
    t0 = time.perf_counter()
    model = build_model(spec)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  built in {time.perf_counter() - t0:.1f}s: {n_params / 1e6:.1f}M parameters "
        f"(dt_rank={model.config.time_step_rank}, d_inner={model.config.intermediate_size}), "
        f"peak RSS {peak_rss_gib():.2f} GiB")

    for seq in args.seqs:
        log(f"\n== {spec['prefix']} S={seq} ==")
        ids, onnx_path, data_path, t_export, t_merge, n_files = export_one(model, spec, seq)
        size = os.path.getsize(onnx_path)
        data_size = os.path.getsize(data_path) if data_path else 0
        log(f"  export: {t_export:.1f}s -> {os.path.relpath(onnx_path, HERE)} "
            f"{size / 2**20:.1f} MiB" +
            (f" + {os.path.basename(data_path)} {data_size / 2**20:.1f} MiB "
             f"(external data: {n_files - 1} exporter files merged in {t_merge:.1f}s)"
             if data_path else " (no external data)") +
            f"; peak RSS {peak_rss_gib():.2f} GiB")
        st = graph_stats(onnx_path)
        log(f"  graph: {st['nodes']} nodes, {st['initializers']} initializers, opset {st['opset']}")
        log(f"  inputs {st['inputs']} outputs {st['outputs']}")
        log("  ops: " + ", ".join(f"{k} {v}" for k, v in st["ops"].items()))
        summary = dict(model=spec["prefix"], seq=seq, params=n_params,
                       export_s=round(t_export, 2), merge_s=round(t_merge, 2),
                       onnx_bytes=size, data_bytes=data_size,
                       nodes=st["nodes"], initializers=st["initializers"], ops=st["ops"])
        if not args.no_ort:
            ref = None
            if not args.no_torch_ref:
                t2 = time.perf_counter()
                with torch.no_grad():
                    ref = model(ids, return_dict=False)[0].numpy()
                log(f"  torch forward: {time.perf_counter() - t2:.2f}s")
            res = ort_check(onnx_path, ids, ref, args.ort_threads)
            del ref
            summary.update(res)
            log(f"  onnxruntime (CPU, {args.ort_threads} thread(s)): session {res['ort_session_s']}s, "
                f"forward {res['ort_forward_s']}s, logits {res['logits_shape']} "
                f"finite={res['logits_finite']}" +
                (f", max|ort-torch|={res['max_abs_diff_vs_torch']:.3g} "
                 f"(max|logit|={res['max_abs_torch_logit']:.3g})"
                 if "max_abs_diff_vs_torch" in res else "") +
                f"; peak RSS {peak_rss_gib():.2f} GiB")
            if not res["logits_finite"]:
                log("  ERROR: non-finite logits")
        summary["peak_rss_gib"] = round(peak_rss_gib(), 2)
        with open(os.path.join(OUT, f"{stem(spec, seq)}.json"), "w") as f:
            json.dump(summary, f, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
