"""Export-variant fixtures: "every Mamba export a user is likely to have compiles".

Regeneration commands (from the repository root). The variants are built with transformers 5.x
(models/.venv5); the onnxsim / ort_* / opset* variants are derived from the transformers-4.40
fixtures tiny_convbias.onnx / tiny_convbias_dynamo.onnx (models/fixtures/, made with models/.venv
by models/make_fixtures.py), so run that first when regenerating everything:

    bash models/setup.sh && bash models/setup.sh 5x
    models/.venv/bin/python models/make_length_fixtures.py
    models/.venv/bin/python models/make_half_fixtures.py
    models/.venv/bin/python models/make_fixtures.py
    models/.venv5/bin/python models/make_variant_fixtures.py

Writes models/fixtures/variants/<name>.onnx + <name>.ref.npz per variant and
models/fixtures/variants/REPORT.txt (op histograms, node counts, sizes, checks, and how each
graph differs from the transformers 4.40 TorchScript export described in
shared/EXPORTED-GRAPHS.md). Deterministic (fixed seeds, single-threaded torch, byte-stable npz).

Variants (tiny sizes, batch 2, seq 8, static shapes unless said):

* ``hf5_tiny`` / ``hf5_tiny_dynamo``: transformers 5.x ``MambaForCausalLM`` (L=2, H=32, N=4,
  R=2, V=64, tied, random conv bias), TorchScript (opset 17) and dynamo (opset 18) exporters.
  transformers 5.x's ``forward`` has ``logits_to_keep: int | Tensor = 0``; the TorchScript
  exporter with ``args=(input_ids,)`` turns it into a second graph input (int64 scalar) and
  gathers ONE position (output [B,V]): a wrong graph. The TorchScript fixtures here are
  therefore exported with ``model.forward`` bound to
  ``MambaForCausalLM.forward(self, input_ids=input_ids, use_cache=False, return_dict=False)``
  (same module tree, same names); the dynamo exporter gets the model as is.
* ``dynbatch`` / ``dynbatch_dynamo``: the hf5_tiny model and inputs, batch axis declared dynamic
  (TS ``dynamic_axes={"input_ids": {0: "batch"}, "logits": {0: "batch"}}``, dynamo
  ``dynamic_shapes={"input_ids": {0: Dim("batch")}}``).
* ``dynboth`` / ``dynboth_dynamo``: batch and sequence declared dynamic (TS axes 0 and 1;
  dynamo ``Dim("batch")``, ``Dim("seq")``). The exporters still unroll the time loop at the
  traced length 8 (see REPORT.txt for what onnxruntime does at other lengths).
* ``minimal`` / ``minimal_dynamo``: models/mamba_minimal.py (a from-scratch Mamba-1 in the
  mamba-minimal style: einsum discretisation, slicing, hand-written RMSNorm, channel-last
  blocks, tied head; L=2, H=24, N=4, R=2, V=96); references from its own rules (checked
  against models/mamba_lrp.py on an HF model with copied weights).
* ``falcon_mamba`` / ``falcon_mamba_dynamo``: transformers 5.x ``FalconMambaForCausalLM``
  (L=2, H=32, N=4, R=2, V=64, tied). Its mixer has weightless RMSNorms on dt, B and C right
  after x_proj. Rule decision: they sit on the selection path, which the SSM rule freezes:
  dt, B and C are detached *after* those norms (discrete_A, discrete_B, C detached, as for
  Mamba), so no relevance passes through them and the mambalrp references do not depend on
  how they are treated; models/mamba_lrp.py also detaches their rsqrt under the "norm" rule
  (matters only for rule subsets without "ssm"; gi differentiates through them plainly).
* ``onnxsim``: models/fixtures/tiny_convbias.onnx (4.40 TS) through onnx-simplifier.
* ``ort_basic`` / ``ort_extended``: tiny_convbias.onnx after onnxruntime offline optimisation
  (``graph_optimization_level = ORT_ENABLE_BASIC`` / ``ORT_ENABLE_EXTENDED``,
  ``optimized_model_filepath``, CPU provider).
* ``ort_extended_dynamo``: the same for tiny_convbias_dynamo.onnx (different fusions).
* ``opset23_rmsnorm``: tiny_convbias_dynamo.onnx with each RMSNorm subgraph
  (Pow, ReduceMean, Add(eps), Sqrt, Reciprocal, Mul(x, .), Mul(w, .)) replaced by one
  ``RMSNormalization(x, w, axis=-1, epsilon=eps, stash_type=1)`` node, opset 23, IR 11.
* ``opset24_swish``: tiny_convbias_dynamo.onnx with each SiLU ``Mul(x, Sigmoid(x))`` replaced by
  one ``Swish(x, alpha=1.0)`` node, opset 24, IR 12.

The derived variants (onnxsim, ort_*, opset*) share their source's references:
their .ref.npz is a byte copy of tiny_convbias.ref.npz.

``.ref.npz`` keys (as in models/make_fixtures.py): ``input_ids`` [B,S] int64, ``logits``
[B,S,V], ``target`` [B] int64, ``target_logit`` [B], ``mambalrp_relevance`` [B,S],
``mambalrp_relevance_embedding`` [B,S,H], ``mambalrp_relevance_bias`` [B] (stabilized SiLU rule,
the default), ``gi_relevance``, ``gi_relevance_embedding``, ``mambalrp_exact_relevance``,
``mambalrp_exact_relevance_embedding``, ``mambalrp_exact_relevance_bias`` (exact SiLU rule).
For dynbatch* and dynboth* the same keys are also stored for other input shapes, suffixed
``_b{B}_s{S}``: ``_b1_s8``, ``_b3_s8`` (other batch sizes at the traced length) and ``_b2_s5``,
``_b2_s12`` (other lengths; the exported graphs are only valid at S=8, these references are for
a compiler that re-rolls the recurrence), e.g. ``mambalrp_relevance_b3_s8`` [3,8],
``input_ids_b2_s12`` [2,12]. The unsuffixed keys are the traced shape (2, 8).
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import sys
import types
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_fixtures  # noqa: E402
import mamba_lrp  # noqa: E402
import mamba_minimal  # noqa: E402

SRC = os.path.join(HERE, "fixtures")
OUT = os.path.join(HERE, "fixtures", "variants")
BATCH, SEQ = 2, 8
OTHER_SHAPES = [(1, 8), (3, 8), (2, 5), (2, 12)]

HF5_SPEC = dict(name="hf5_tiny", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
                tied=True, conv_bias="random", xproj_scale=1.0, seed=2001)
FALCON_SPEC = dict(layers=2, hidden=32, state=4, dt_rank=2, vocab=64, seed=2002)
MINIMAL_SPEC = dict(vocab=96, d_model=24, n_layers=2, d_state=4, dt_rank=2, seed=3001)

REPORT: list[str] = []
SUMMARY: list[str] = []


def log(*a):
    line = " ".join(str(x) for x in a)
    print(line, flush=True)
    REPORT.append(line)


# ----------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------

def make_refs(relfn, logits_fn, ids, suffix=""):
    """All .ref.npz arrays for ``ids``; ``relfn(ids, rules, target, silu_rule)`` returns a
    mamba_lrp.relevance-style dict; ``logits_fn(ids)`` the model's own logits."""
    with torch.no_grad():
        logits = logits_fn(ids).float()
    target = logits[:, -1].argmax(-1)
    full = relfn(ids, "mambalrp", target, "stabilized")
    exact = relfn(ids, "mambalrp", target, "exact")
    gi = relfn(ids, "gi", target, "stabilized")
    tl = logits[torch.arange(ids.shape[0]), -1, target]
    res = {}
    for label, ref in (("stabilized", full), ("exact", exact)):
        f = ref["target_logit"]
        res[label] = float(((ref["relevance"].sum(-1) + ref["relevance_bias"] - f).abs() / f.abs()).max())
        assert res[label] < 1e-5, f"conservation broken ({label}): {res[label]}"
    d_tl = float((full["target_logit"] - tl).abs().max() / tl.abs().max())
    arrays = dict(
        input_ids=ids.numpy().astype(np.int64),
        logits=logits.numpy().astype(np.float32),
        target=target.numpy().astype(np.int64),
        target_logit=tl.numpy().astype(np.float32),
        **make_fixtures.reference_arrays(full, "mambalrp"),
        gi_relevance=gi["relevance"].numpy().astype(np.float32),
        gi_relevance_embedding=gi["relevance_embedding"].numpy().astype(np.float32),
        **make_fixtures.reference_arrays(exact, "mambalrp_exact"),
    )
    info = dict(conservation=res, target=target.tolist(), target_logit=tl.tolist(),
                sum_r=full["relevance"].sum(-1).tolist(), r_bias=full["relevance_bias"].tolist(),
                d_target_logit=d_tl)
    return {k + suffix: v for k, v in arrays.items()}, info


def log_refs(info, label=""):
    log(f"  reference{label}: target {info['target']}, target_logit "
        f"{[f'{v:.6f}' for v in info['target_logit']]}, sum(R) {[f'{v:.6f}' for v in info['sum_r']]}, "
        f"R_bias {[f'{v:.3e}' for v in info['r_bias']]}; conservation |sum(R)+R_bias-f|/|f| "
        f"stabilized {info['conservation']['stabilized']:.2e}, exact {info['conservation']['exact']:.2e}; "
        f"rule-forward vs model logit rel {info['d_target_logit']:.1e}")


def hf_relfn(model):
    def relfn(ids, rules, target, silu_rule):
        return mamba_lrp.relevance(model, ids, rules, target, silu_rule=silu_rule)
    return relfn


def hf_logits_fn(model):
    def fn(ids):
        return model(input_ids=ids, use_cache=False).logits
    return fn


def gi_vs_autograd(model_call, embed_fn, ids, gi_emb, target):
    """Relative max difference between a gi reference and gradient x input taken by autograd
    through the model's own forward (``model_call(E)`` -> logits)."""
    E = embed_fn(ids).detach().clone().requires_grad_(True)
    f = model_call(E)[torch.arange(ids.shape[0]), -1, target]
    (g,) = torch.autograd.grad(f.sum(), E)
    ref = torch.as_tensor(gi_emb)
    return float(((E * g).detach() - ref).abs().max() / ref.abs().max())


# ----------------------------------------------------------------------------------
# ONNX helpers
# ----------------------------------------------------------------------------------

def ort_run(path_or_bytes, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    sess = ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def refeval_run(path, feeds):
    import onnx
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(onnx.load(path)).run(None, feeds)[0]


def check_logits(path, ids, want, engine="ort"):
    out = (ort_run if engine == "ort" else refeval_run)(path, {"input_ids": np.asarray(ids)})
    want = np.asarray(want)
    if out.shape != want.shape:
        raise AssertionError(f"{path}: output shape {out.shape} vs {want.shape}")
    d = float(np.abs(out - want).max() / np.abs(want).max())
    return d


def dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def graph_summary(path):
    import onnx

    m = onnx.load(path)
    try:
        onnx.checker.check_model(m, full_check=True)
        checker = "checker full_check OK"
    except Exception as e:
        checker = f"checker FAILS: {type(e).__name__}: {str(e).strip().splitlines()[0]}"
    nodes = list(m.graph.node)
    hist = collections.Counter((n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
                               for n in nodes)
    opset = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
    md = collections.Counter(p.key for n in nodes for p in n.metadata_props)
    log(f"  file {os.path.basename(path)}: {os.path.getsize(path)} bytes, {len(nodes)} nodes, "
        f"ir_version {m.ir_version}, opset {opset}, producer '{m.producer_name} {m.producer_version}', "
        f"initializers {len(m.graph.initializer)}, value_info {len(m.graph.value_info)}; {checker}")
    log("  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))))
    log(f"  inputs {[(i.name, i.type.tensor_type.elem_type, dims(i)) for i in m.graph.input]}, "
        f"outputs {[(o.name, o.type.tensor_type.elem_type, dims(o)) for o in m.graph.output]}")
    if md:
        log(f"  node metadata keys: {dict(md)}")
    SUMMARY.append(f"{os.path.basename(path)}: {os.path.getsize(path)} B, {len(nodes)} nodes, "
                   f"ir {m.ir_version}, opset {opset}")
    return m, hist


def drop_node_metadata(path, keep_non_stacktrace):
    make_fixtures.drop_stack_traces(path, all_node_metadata=not keep_non_stacktrace)


def quiet_export(*args, **kwargs):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return torch.onnx.export(*args, **kwargs)


def bind_plain_forward(model):
    """model.forward(input_ids) -> (logits,) without the logits_to_keep argument (see the
    module docstring: the TorchScript exporter makes that default a graph input)."""
    cls = type(model)

    def fwd(self, input_ids):
        return cls.forward(self, input_ids=input_ids, use_cache=False, return_dict=False)

    model.forward = types.MethodType(fwd, model)
    return model


def unbind_forward(model):
    if "forward" in model.__dict__:
        del model.forward
    return model


def export_ts(model, ids, path, dynamic_axes=None):
    quiet_export(model, (ids,), path, dynamo=False, opset_version=17, input_names=["input_ids"],
                 output_names=["logits"], dynamic_axes=dynamic_axes)


def export_dynamo(model, ids, path, dynamic_shapes=None, keep_metadata=False):
    quiet_export(model, (ids,), path, dynamo=True, opset_version=18, external_data=False,
                 input_names=["input_ids"], output_names=["logits"], dynamic_shapes=dynamic_shapes)
    drop_node_metadata(path, keep_metadata)


def difflist(items):
    log("  differences from the transformers 4.40 TorchScript export (shared/EXPORTED-GRAPHS.md):")
    for it in items:
        log(f"    - {it}")


# ----------------------------------------------------------------------------------
# structural probes (used to write / check the difference lists)
# ----------------------------------------------------------------------------------

def probes(m):
    """A few structural facts, logged (op order, operand positions, constant shapes)."""
    import onnx.numpy_helper as nh

    g = m.graph
    nodes = list(g.node)
    prod = {o: n for n in nodes for o in n.output}
    inits = {i.name: i for i in g.initializer}

    def shape_of(name):
        if name in inits:
            return list(inits[name].dims)
        p = prod.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return list(a.t.dims)
        return None

    out = []
    silu = [0, 0]
    for n in nodes:
        if n.op_type == "Mul" and len(n.input) == 2:
            for pos in (0, 1):
                p = prod.get(n.input[1 - pos])
                if p is not None and p.op_type == "Sigmoid" and p.input[0] == n.input[pos]:
                    silu[pos] += 1
    out.append(f"SiLU Mul(x,Sigmoid(x)) x first {silu[0]}, x second {silu[1]}")
    forms = collections.Counter()
    for n in nodes:
        if n.op_type == "Sqrt":
            users = [u for u in nodes if n.output[0] in u.input]
            forms["Sqrt->" + "/".join(sorted(u.op_type for u in users))] += 1
        if n.op_type in ("Einsum",):
            forms["Einsum " + next(a.s.decode() for a in n.attribute if a.name == "equation")] += 1
        if n.op_type == "Split":
            sizes = shape_of(n.input[1]) if len(n.input) > 1 and n.input[1] else None
            val = None
            if len(n.input) > 1 and n.input[1] in inits:
                val = nh.to_array(inits[n.input[1]]).tolist()
            attrs = {a.name: (a.i if a.type == 2 else list(a.ints)) for a in n.attribute}
            forms[f"Split outputs={len(n.output)} sizes={val} attrs={attrs}"] += 1
        if n.op_type == "MatMul":
            a_init = n.input[0] in inits
            b_init = n.input[1] in inits
            forms[f"MatMul weight {'first ' + str(shape_of(n.input[0])) if a_init else ('second ' + str(shape_of(n.input[1])) if b_init else 'none')}"] += 1
        if n.op_type in ("Add", "Mul", "Sub", "Div"):
            for pos in (0, 1):
                s = shape_of(n.input[pos])
                if s is not None and len(s) >= 1 and np.prod(s) > 1:
                    forms[f"{n.op_type} const {s} at {pos}"] += 1
        if n.op_type == "Conv":
            attrs = {a.name: (a.i if a.type == 2 else list(a.ints)) for a in n.attribute}
            forms[f"Conv inputs={len(n.input)} W{shape_of(n.input[1])} {attrs}"] += 1
        if n.op_type in ("Slice",):
            forms[f"Slice inputs={len(n.input)}"] += 1
        if n.domain not in ("", "ai.onnx"):
            attrs = {a.name: (a.f if a.type == 1 else a.i if a.type == 2 else list(a.ints)) for a in n.attribute}
            forms[f"{n.domain}::{n.op_type} {attrs} in-shapes {[shape_of(i) for i in n.input]}"] += 1
        if n.op_type in ("RMSNormalization", "Swish", "Softplus", "Where", "Reshape", "Gemm",
                         "ConstantOfShape", "Expand", "Shape", "Squeeze", "Transpose", "Concat"):
            attrs = {a.name: (a.f if a.type == 1 else a.i if a.type == 2 else list(a.ints)) for a in n.attribute}
            forms[f"{n.op_type} {attrs}"] += 1
    emb = [n.input[0] for n in nodes if n.op_type == "Gather" and n.input[1] == "input_ids"]
    forms[f"embedding Gather table {emb}"] += 1
    for n in nodes:
        if n.op_type == "Conv":
            forms[f"Conv weight initializer '{n.input[1]}'"] += 1
    for k, v in sorted(forms.items()):
        out.append(f"{k} x{v}")
    log("  structure: " + "; ".join(out))


def dump(path, dest):
    import onnx

    m = onnx.load(path)
    with open(dest, "w") as fh:
        for i, n in enumerate(m.graph.node):
            fh.write(f"{i} {n.domain + '::' if n.domain else ''}{n.op_type} {list(n.input)} -> {list(n.output)}\n")


# ----------------------------------------------------------------------------------
# variants
# ----------------------------------------------------------------------------------

def build_hf5():
    model = make_fixtures.build_model(HF5_SPEC)
    return model


def variant_hf5(model, ids):
    log("== hf5_tiny / hf5_tiny_dynamo: transformers 5.x MambaForCausalLM "
        f"(L=2 H=32 D=64 N=4 R=2 V=64 tied, random conv bias, seed {HF5_SPEC['seed']}), B=2 S=8")
    d = mamba_lrp.check_against_hf(model, ids)
    log(f"  mamba_lrp.py forward (rules off) vs transformers 5.x logits: max abs diff {d:.2e}")
    arrays, info = make_refs(hf_relfn(model), hf_logits_fn(model), ids)
    log_refs(info)
    d_gi = gi_vs_autograd(lambda E: model(inputs_embeds=E, use_cache=False).logits,
                          model.backbone.embeddings, ids, arrays["gi_relevance_embedding"],
                          torch.as_tensor(arrays["target"]))
    log(f"  gi reference vs autograd through transformers 5.x's module: rel max diff {d_gi:.2e}")
    assert d_gi < 1e-5
    # what a plain TorchScript export gives
    bad = os.path.join("/tmp", "hf5_plain_ts.onnx")
    unbind_forward(model)
    model.config.return_dict = False
    export_ts(model, ids, bad)
    import onnx
    mb = onnx.load(bad)
    log(f"  plain TorchScript export (args=(input_ids,), no forward binding): inputs "
        f"{[(i.name, dims(i)) for i in mb.graph.input]}, outputs {[(o.name, dims(o)) for o in mb.graph.output]}"
        " -> logits_to_keep became an int64 scalar input and the graph Gathers one position "
        "(Gather(axis=1) of the final-norm output before lm_head); not used as a fixture")
    model.config.return_dict = True
    for name, kind in (("hf5_tiny", "ts"), ("hf5_tiny_dynamo", "dynamo")):
        path = os.path.join(OUT, f"{name}.onnx")
        if kind == "ts":
            bind_plain_forward(model)
            export_ts(model, ids, path)
            unbind_forward(model)
        else:
            model.config.return_dict = False
            export_dynamo(model, ids, path, keep_metadata=True)
            model.config.return_dict = True
        make_fixtures.save_npz(os.path.join(OUT, f"{name}.ref.npz"), **arrays)
        finish(name, path, ids, arrays["logits"])
    return arrays


def finish(name, path, ids, logits, engine="ort"):
    log(f" -- {name}")
    m, hist = graph_summary(path)
    d = check_logits(path, ids, logits, engine)
    log(f"  {engine} logits vs PyTorch: rel max diff {d:.2e} (<= 1e-5: {d <= 1e-5})")
    assert d <= 1e-5, f"{name}: logits differ {d}"
    probes(m)
    DIFFS_PENDING.append(name)
    dump(path, os.path.join("/tmp", f"dump_{name}.txt"))
    return m


DIFFS_PENDING: list[str] = []


def variant_dynamic(model, ids):
    from torch.export import Dim

    log("== dynbatch / dynboth (+ _dynamo): the hf5_tiny model (transformers 5.x), dynamic axes declared")
    log("  .ref.npz: the default keys at the traced shape (2, 8) (same values as hf5_tiny.ref.npz) plus "
        "every key again suffixed _b1_s8, _b3_s8, _b2_s5, _b2_s12 (input_ids_b3_s8 [3,8], "
        "mambalrp_relevance_b2_s12 [2,12], ...): references for those input shapes")
    arrays, info = make_refs(hf_relfn(model), hf_logits_fn(model), ids)
    extra = {}
    other_ids = {}
    for b, s in OTHER_SHAPES:
        g = torch.Generator().manual_seed(HF5_SPEC["seed"] + 100 * b + s)
        x = torch.randint(0, HF5_SPEC["vocab"], (b, s), generator=g, dtype=torch.int64)
        other_ids[(b, s)] = x
        arr, inf = make_refs(hf_relfn(model), hf_logits_fn(model), x, suffix=f"_b{b}_s{s}")
        log_refs(inf, f" _b{b}_s{s}")
        extra.update(arr)
    arrays.update(extra)
    specs = [
        ("dynbatch", "ts", dict(dynamic_axes={"input_ids": {0: "batch"}, "logits": {0: "batch"}})),
        ("dynbatch_dynamo", "dynamo", dict(dynamic_shapes={"input_ids": {0: Dim("batch")}})),
        ("dynboth", "ts", dict(dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                             "logits": {0: "batch", 1: "seq"}})),
        # Dim("batch"), Dim("seq") exports without error but silently specializes seq to 8: the
        # graph is byte-identical to dynbatch_dynamo (checked below); Dim.AUTO keeps both
        # axes symbolic in the declared input
        ("dynboth_dynamo", "dynamo", dict(dynamic_shapes={"input_ids": {0: Dim.AUTO, 1: Dim.AUTO}})),
    ]
    named = os.path.join("/tmp", "dynboth_named_dims_dynamo.onnx")
    model.config.return_dict = False
    export_dynamo(model, ids, named, dynamic_shapes={"input_ids": {0: Dim("batch"), 1: Dim("seq")}})
    model.config.return_dict = True
    import onnx
    mn = onnx.load(named)
    log(f"  dynamo with Dim('batch'), Dim('seq'): exports without error, declared input "
        f"{[(i.name, dims(i)) for i in mn.graph.input]} (seq silently specialized to 8); not kept "
        "(same graph as dynbatch_dynamo); dynboth_dynamo uses Dim.AUTO for both axes")
    for name, kind, kw in specs:
        path = os.path.join(OUT, f"{name}.onnx")
        try:
            if kind == "ts":
                bind_plain_forward(model)
                export_ts(model, ids, path, **kw)
                unbind_forward(model)
            else:
                model.config.return_dict = False
                export_dynamo(model, ids, path, **kw)
                model.config.return_dict = True
        except Exception as e:  # dynamo may refuse the seq Dim
            unbind_forward(model)
            model.config.return_dict = True
            log(f" -- {name}: export with {kw} FAILED: {type(e).__name__}: {str(e)[:400]}")
            if kind == "dynamo":
                kw2 = dict(dynamic_shapes={"input_ids": {0: Dim.AUTO, 1: Dim.AUTO}})
                log(f"    retrying with {kw2}")
                model.config.return_dict = False
                export_dynamo(model, ids, path, **kw2)
                model.config.return_dict = True
            else:
                raise
        make_fixtures.save_npz(os.path.join(OUT, f"{name}.ref.npz"), **arrays)
        finish(name, path, ids, arrays["logits"])
        for (b, s), x in other_ids.items():
            sfx = f"_b{b}_s{s}"
            try:
                d = check_logits(path, x, arrays["logits" + sfx])
                log(f"  onnxruntime at (B={b}, S={s}): runs, logits rel max diff {d:.2e}")
                if s == SEQ:
                    assert d <= 1e-5
            except Exception as e:
                msg = str(e).replace("\n", " ")
                log(f"  onnxruntime at (B={b}, S={s}): FAILS: {type(e).__name__}: {msg[:300]}")
                if s == SEQ:
                    raise
    return arrays


def variant_minimal(hf_model, ids_hf):
    log("== minimal / minimal_dynamo: models/mamba_minimal.py (mamba-minimal style, einsum scan), "
        f"{MINIMAL_SPEC}")
    # cross-check the rules against mamba_lrp.py on an HF model with copied weights
    mm = mamba_minimal.copy_from_hf(hf_model)
    with torch.no_grad():
        d_log = float((mm(ids_hf) - hf_model(input_ids=ids_hf, use_cache=False).logits).abs().max())
    log(f"  cross-check with HF (hf5_tiny weights copied into MinimalMamba): logits max abs diff {d_log:.2e}")
    for rules, silu_rule in (("mambalrp", "stabilized"), ("mambalrp", "exact"), ("gi", "stabilized"),
                             ("silu,norm,gate", "stabilized"), ("norm,ssm,gate", "stabilized")):
        a = mamba_minimal.relevance(mm, ids_hf, rules, silu_rule=silu_rule)
        b = mamba_lrp.relevance(hf_model, ids_hf, rules, a["target"], silu_rule=silu_rule)
        d_tok = make_fixtures.rel_max_diff(a["relevance"], b["relevance"])
        d_emb = make_fixtures.rel_max_diff(a["relevance_embedding"], b["relevance_embedding"])
        d_bias = float((a["relevance_bias"] - b["relevance_bias"]).abs().max() / b["target_logit"].abs().max())
        log(f"    rules {rules} ({silu_rule}): mamba_minimal vs mamba_lrp rel max diff token {d_tok:.2e}, "
            f"embedding {d_emb:.2e}, R_bias {d_bias:.2e}")
        assert d_tok < 1e-5 and d_emb < 1e-4, "mamba_minimal rules disagree with mamba_lrp"
    model = mamba_minimal.build(**MINIMAL_SPEC)
    g = torch.Generator().manual_seed(MINIMAL_SPEC["seed"] + 12345)
    ids = torch.randint(0, MINIMAL_SPEC["vocab"], (BATCH, SEQ), generator=g, dtype=torch.int64)
    relfn = lambda x, rules, target, silu_rule: mamba_minimal.relevance(model, x, rules, target, silu_rule)  # noqa: E731
    arrays, info = make_refs(relfn, model, ids)
    log_refs(info)
    d_gi = gi_vs_autograd(lambda E: model.from_embeddings(E), model.embedding, ids,
                          arrays["gi_relevance_embedding"], torch.as_tensor(arrays["target"]))
    log(f"  gi reference (all detaches removed) vs gradient x input through the plain forward: "
        f"rel max diff {d_gi:.2e}")
    assert d_gi < 1e-5
    for name, kind in (("minimal", "ts"), ("minimal_dynamo", "dynamo")):
        path = os.path.join(OUT, f"{name}.onnx")
        if kind == "ts":
            export_ts(model, ids, path)
        else:
            export_dynamo(model, ids, path)
        make_fixtures.save_npz(os.path.join(OUT, f"{name}.ref.npz"), **arrays)
        finish(name, path, ids, arrays["logits"])


def build_falcon():
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    s = FALCON_SPEC
    cfg = FalconMambaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], state_size=s["state"],
                            num_hidden_layers=s["layers"], expand=2, conv_kernel=4,
                            time_step_rank=s["dt_rank"], use_conv_bias=True, use_bias=False,
                            tie_word_embeddings=True, use_cache=False)
    torch.manual_seed(s["seed"])
    model = FalconMambaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(s["seed"] + 7)

    def noise(t, scale):
        return torch.randn(t.shape, generator=g, dtype=t.dtype) * scale

    with torch.no_grad():
        for layer in model.backbone.layers:
            mx = layer.mixer
            layer.norm.weight.add_(noise(layer.norm.weight, 0.2))
            mx.A_log.add_(noise(mx.A_log, 0.2))
            mx.D.add_(noise(mx.D, 0.2))
            mx.dt_proj.bias.add_(noise(mx.dt_proj.bias, 0.2))
            mx.conv1d.bias.add_(noise(mx.conv1d.bias, 0.1))
        model.backbone.norm_f.weight.add_(noise(model.backbone.norm_f.weight, 0.2))
    return model


def variant_falcon():
    log(f"== falcon_mamba / falcon_mamba_dynamo: transformers 5.x FalconMambaForCausalLM {FALCON_SPEC}, "
        "tied, random conv bias, mixer_rms_eps default")
    model = build_falcon()
    log(f"  mixer_rms_eps {model.config.mixer_rms_eps}, layer_norm_epsilon {model.config.layer_norm_epsilon}")
    log("  rule decision: the weightless RMSNorms on dt, B, C sit on the selection path; the SSM rule "
        "detaches dt, B, C after them (discrete_A, discrete_B, C detached, as for Mamba), so no "
        "relevance passes through them; mamba_lrp.py also detaches their rsqrt under 'norm' (only "
        "matters for rule subsets without 'ssm'); gi differentiates through them")
    g = torch.Generator().manual_seed(FALCON_SPEC["seed"] + 12345)
    ids = torch.randint(0, FALCON_SPEC["vocab"], (BATCH, SEQ), generator=g, dtype=torch.int64)
    d = mamba_lrp.check_against_hf(model, ids)
    log(f"  mamba_lrp.py forward (rules off, with the dt/B/C norms) vs HF logits: max abs diff {d:.2e}")
    arrays, info = make_refs(hf_relfn(model), hf_logits_fn(model), ids)
    log_refs(info)
    d_gi = gi_vs_autograd(lambda E: model(inputs_embeds=E, use_cache=False).logits,
                          model.backbone.embeddings, ids, arrays["gi_relevance_embedding"],
                          torch.as_tensor(arrays["target"]))
    log(f"  gi reference vs autograd through FalconMamba's module: rel max diff {d_gi:.2e}")
    assert d_gi < 1e-5
    # the dt/B/C norms' treatment does not change mambalrp (selection path frozen)
    tgt = torch.as_tensor(arrays["target"])
    a = mamba_lrp.relevance(model, ids, "mambalrp", tgt)
    b = mamba_lrp.relevance(model, ids, ["silu", "ssm", "gate"], tgt)
    log(f"  (info) ablation -norm rel diff {make_fixtures.rel_max_diff(b['relevance'], a['relevance']):.2e}")
    for name, kind in (("falcon_mamba", "ts"), ("falcon_mamba_dynamo", "dynamo")):
        path = os.path.join(OUT, f"{name}.onnx")
        if kind == "ts":
            bind_plain_forward(model)
            export_ts(model, ids, path)
            unbind_forward(model)
        else:
            model.config.return_dict = False
            export_dynamo(model, ids, path)
            model.config.return_dict = True
        make_fixtures.save_npz(os.path.join(OUT, f"{name}.ref.npz"), **arrays)
        finish(name, path, ids, arrays["logits"])


def source_ref():
    return dict(np.load(os.path.join(SRC, "tiny_convbias.ref.npz")))


def copy_ref(name):
    shutil.copyfile(os.path.join(SRC, "tiny_convbias.ref.npz"), os.path.join(OUT, f"{name}.ref.npz"))


def variant_onnxsim():
    import onnx
    import onnxsim

    log(f"== onnxsim: fixtures/tiny_convbias.onnx (transformers 4.40, TorchScript) through onnxsim "
        f"{onnxsim.__version__} (simplify(model), defaults)")
    ref = source_ref()
    m, ok = onnxsim.simplify(onnx.load(os.path.join(SRC, "tiny_convbias.onnx")))
    assert ok, "onnxsim check failed"
    path = os.path.join(OUT, "onnxsim.onnx")
    onnx.save(m, path)
    copy_ref("onnxsim")
    finish("onnxsim", path, ref["input_ids"], ref["logits"])


def variant_ort(level_name, src="tiny_convbias.onnx", name=None):
    import onnxruntime as ort

    name = name or f"ort_{level_name}"
    level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level_name]
    log(f"== {name}: fixtures/{src} after onnxruntime {ort.__version__} offline optimisation "
        f"(ORT_ENABLE_{level_name.upper()}, CPUExecutionProvider, optimized_model_filepath)")
    ref = source_ref()
    path = os.path.join(OUT, f"{name}.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = path
    so.intra_op_num_threads = 1
    ort.InferenceSession(os.path.join(SRC, src), so, providers=["CPUExecutionProvider"])
    copy_ref(name)
    finish(name, path, ref["input_ids"], ref["logits"])


def _consumers(nodes, name):
    return [n for n in nodes if name in n.input]


def rewrite_rmsnorm():
    """tiny_convbias_dynamo.onnx: each Pow(x,2) -> ReduceMean(axes=[-1]) -> Add(eps) -> Sqrt ->
    Reciprocal -> Mul(x, r) -> Mul(w, .) becomes RMSNormalization(x, w), opset 23, IR 11."""
    import onnx
    import onnx.numpy_helper as nh
    from onnx import helper

    m = onnx.load(os.path.join(SRC, "tiny_convbias_dynamo.onnx"))
    g = m.graph
    nodes = list(g.node)
    prod = {o: n for n in nodes for o in n.output}
    inits = {i.name: nh.to_array(i) for i in g.initializer}
    remove, new_at = set(), {}
    count = 0
    for n in nodes:
        if n.op_type != "Pow":
            continue
        x = n.input[0]
        assert float(inits[n.input[1]]) == 2.0
        (rm,) = _consumers(nodes, n.output[0])
        assert rm.op_type == "ReduceMean" and inits[rm.input[1]].tolist() == [-1]
        (add,) = _consumers(nodes, rm.output[0])
        eps = float(inits[add.input[1]])
        (sq,) = _consumers(nodes, add.output[0])
        (rc,) = _consumers(nodes, sq.output[0])
        assert sq.op_type == "Sqrt" and rc.op_type == "Reciprocal"
        (mul,) = _consumers(nodes, rc.output[0])
        assert mul.op_type == "Mul" and mul.input[0] == x
        (mw,) = _consumers(nodes, mul.output[0])
        assert mw.op_type == "Mul" and mw.input[1] == mul.output[0] and mw.input[0] in inits
        chain = [n, rm, add, sq, rc, mul, mw]
        for c in chain:
            remove.add(id(c))
        new = helper.make_node("RMSNormalization", [x, mw.input[0]], [mw.output[0]],
                               name=f"rmsnorm_{count}", axis=-1, epsilon=eps, stash_type=1)
        new_at[id(mw)] = new
        count += 1
    out_nodes = []
    for n in nodes:
        if id(n) in new_at:
            out_nodes.append(new_at[id(n)])
        elif id(n) not in remove:
            out_nodes.append(n)
    _replace_nodes(g, out_nodes)
    _set_opset(m, 23)
    return m, count


def rewrite_swish():
    """tiny_convbias_dynamo.onnx: each Mul(x, Sigmoid(x)) becomes Swish(x, alpha=1.0),
    opset 24, IR 12."""
    import onnx
    from onnx import helper

    m = onnx.load(os.path.join(SRC, "tiny_convbias_dynamo.onnx"))
    g = m.graph
    nodes = list(g.node)
    prod = {o: n for n in nodes for o in n.output}
    remove, new_at = set(), {}
    count = 0
    for n in nodes:
        if n.op_type != "Mul":
            continue
        for pos in (0, 1):
            p = prod.get(n.input[1 - pos])
            if p is not None and p.op_type == "Sigmoid" and p.input[0] == n.input[pos]:
                users = _consumers(nodes, p.output[0])
                assert users == [n]
                remove.add(id(p))
                new_at[id(n)] = helper.make_node("Swish", [n.input[pos]], [n.output[0]],
                                                 name=f"swish_{count}", alpha=1.0)
                count += 1
                break
    out_nodes = [new_at.get(id(n), n) for n in nodes if id(n) not in remove]
    _replace_nodes(g, out_nodes)
    _set_opset(m, 24)
    return m, count


def _replace_nodes(g, out_nodes):
    del g.node[:]
    g.node.extend(out_nodes)
    used = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {i.name for i in g.initializer}
    keep = [vi for vi in g.value_info if vi.name in used]
    del g.value_info[:]
    g.value_info.extend(keep)
    needed = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


def _set_opset(m, version):
    import onnx

    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    m.ir_version = {23: 11, 24: 12}[version]
    onnx.checker.check_model(m, full_check=True)


def variant_opset(name, rewrite):
    import onnx
    import onnxruntime as ort

    m, count = rewrite()
    for n in m.graph.node:  # keep the file small: no node metadata
        del n.metadata_props[:]
    log(f"== {name}: fixtures/tiny_convbias_dynamo.onnx rewritten with the onnx API "
        f"({count} sites replaced; node metadata dropped)")
    path = os.path.join(OUT, f"{name}.onnx")
    onnx.save(m, path)
    copy_ref(name)
    ref = source_ref()
    try:
        d = check_logits(path, ref["input_ids"], ref["logits"], "ort")
        log(f"  onnxruntime {ort.__version__} runs it: logits rel max diff {d:.2e}")
        engine = "ort"
    except Exception as e:
        log(f"  onnxruntime {ort.__version__} does not run it: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}; checking with onnx.reference.ReferenceEvaluator")
        engine = "refeval"
    finish(name, path, ref["input_ids"], ref["logits"], engine)
    if engine == "ort":
        d2 = check_logits(path, ref["input_ids"], ref["logits"], "refeval")
        log(f"  onnx.reference.ReferenceEvaluator logits rel max diff {d2:.2e}")



# How each variant's graph differs from the transformers 4.40 TorchScript export
# (shared/EXPORTED-GRAPHS.md, e.g. fixtures/tiny_convbias.onnx). Written from the graph dumps and
# the structural probes logged in REPORT.txt; L = layers, S = 8, D = 2H, "[I: shape]" = initializer.
DYNAMO_BASE = (
    "all 4.40 dynamo differences (EXPORTED-GRAPHS.md sections 1-5): opset 18 / IR 10; no Cast, no "
    "Constant (constants are initializers); rsqrt as Reciprocal(Sqrt(.)); ReduceMean axes as 2nd "
    "input; in_proj chunk as one Split(axis=1, num_outputs=2); x_proj Split(axis=2, sizes [R,N,N] "
    "[I]); Softplus + Greater(u, 20.0[I]) + Where(greater, u, softplus); A = -exp(A_log) folded into "
    "[I: 1xDx1xN] (not bit-exact), no Exp/Neg on A_log; zero initial state initializer 'zeros' "
    "[I: BxDxN]; recurrence Mul(dA_t, h) reads the Add output directly; tied embedding Gather table "
    "named 'lm_head.weight'; value_info for nearly every tensor; fx node names")
HF5_TS = [
    "dt_proj: Transpose(perm=[0,2,1]) of x_proj Split output 0 ([B,S,R] -> [B,R,S]) -> "
    "MatMul(W_dt [I: DxR, the HF parameter 'backbone.layers.l.mixer.dt_proj.weight', NOT transposed], "
    ".) with the weight FIRST -> Add(., bias [I: Dx1, 'onnx::Add_*']) with the bias SECOND and shape "
    "[D,1] -> Softplus on [B,D,S]; no Transpose after Softplus (4.40: MatMul(dt_in, W^T [I: RxD]) -> "
    "Add(bias [D] first, .) -> Softplus -> Transpose). Node names '/mixer/MatMul', '/mixer/Add_1' "
    "(no dt_proj scope)",
    "Conv weight is a copy 'onnx::Conv_*' [I: Dx1xK] (weight.squeeze(1).unsqueeze(1)), not the HF "
    "name 'backbone.layers.l.mixer.conv1d.weight'; node '/mixer/Conv' (no conv1d scope); bias keeps "
    "its HF name",
    "+3 Cast(to=FLOAT) per layer (38 vs 32): on the Conv input (from the chunk Slice), on the conv "
    "SiLU output (the x_proj Transpose, the deltaB_u Unsqueeze->Cast and the D-skip Mul read this "
    "Cast, not the SiLU Mul), and between the out_proj Transpose and the out_proj MatMul",
    "SiLU nodes have no module scope ('/mixer/Sigmoid' + '/mixer/Mul_2' conv branch, "
    "'/mixer/Sigmoid_1' + '/mixer/Mul_15' gate; 4.40: '/mixer/act/...', '/mixer/act_1/...'); form "
    "unchanged: Mul(x, Sigmoid(x)), x first",
    "unchanged: Shape-driven Slice pair for the chunk, 3-output Split [R,N,N] axis=-1, "
    "Exp(A_log)->Neg, Div(1.0, Sqrt), norm weight first, gate Mul(y, SiLU(z)) y first, residual "
    "Add(residual, out_proj) residual first, Casts in the recurrence chain, lm_head Cast->MatMul->Cast",
    "a plain TorchScript export of transformers 5.x (args=(input_ids,)) is a different, broken graph: "
    "a 2nd input 'logits_to_keep' (int64 scalar) and Gather(axis=1) of one position before lm_head, "
    "output [B,V]; the fixture binds forward(input_ids) (see the module docstring)",
]
HF5_DYN = [
    DYNAMO_BASE,
    "dt_proj as in hf5_tiny: Transpose(dt_in) -> MatMul(W_dt [I: DxR, HF name], .) weight FIRST -> "
    "Add(., bias [I: Dx1, 'unsqueeze_*']) bias SECOND -> Softplus/Greater/Where on [B,D,S]; no "
    "Transpose after (4.40 dynamo: MatMul(dt_in, W^T) -> Add(., bias [D]) -> ... -> Transpose)",
    "the SSM input u (read by the deltaB_u Unsqueeze and the D-skip Mul) is Transpose(perm=[0,2,1]) "
    "of the x_proj input Transpose, i.e. Transpose(Transpose(silu)), not the SiLU output itself "
    "(+1 Transpose per layer: 10 vs 8)",
    "Conv weight initializer 'unsqueeze' / 'unsqueeze_18' [I: Dx1xK] (not the HF name)",
    "233 nodes (4.40 dynamo: 231); node metadata kept (namespace, pkg.torch.onnx.class_hierarchy, "
    "fx_node, name_scopes; stack traces dropped)",
]
DYNBATCH_TS = [
    "everything listed for hf5_tiny (same model, same exporter)",
    "input_ids [batch, 8]; output logits [batch, 'Castlogits_dim_1', 64] (the exporter made the "
    "output's seq dim symbolic although only batch was declared)",
    "zero initial SSM state per layer: ConstantOfShape(Concat(axis=0, Unsqueeze(Gather(Shape(x),0)), "
    "Unsqueeze(Gather(Shape(x),1)), [N] Constant)) with x = the Cast after the conv SiLU, instead of a "
    "Constant [B,D,N]",
    "causal conv Slice 'ends' = Unsqueeze(Gather(Shape(chunk x half), 2)) (the sequence length read "
    "from the tensor) instead of a Constant [S]",
    "+6 Shape, +6 Gather, +6 Unsqueeze, +2 Concat, +2 ConstantOfShape, +10 Constant (401 nodes)",
]
DYNBOTH_TS = DYNBATCH_TS[:1] + [
    "input_ids [batch, seq], logits [batch, seq, 64]; otherwise the same nodes as dynbatch (401): the "
    "time loop is still unrolled 8 times with constant Gather indices 0..7",
] + DYNBATCH_TS[2:]
DYNBATCH_DYN = [
    "everything listed for hf5_tiny_dynamo",
    "input_ids [batch, 8], logits [batch, 8, 64]",
    "zero initial state 'zeros' = Expand(0.0 [I: scalar], Concat(axis=0, Shape(input_ids, start=0, "
    "end=1), [D] [I], [N] [I])), one for both layers (+Shape, +Concat, +Expand: 236 nodes)",
    "no node metadata at all",
]
DYNBOTH_DYN = DYNBATCH_DYN[:1] + [
    "exported with Dim.AUTO for both axes: input_ids ['s72', 's70'], logits ['s72', 8, 64] "
    "(Dim('batch'), Dim('seq') gives the dynbatch_dynamo graph byte for byte: seq silently "
    "specialized to 8)",
    DYNBATCH_DYN[2],
    "plus Shape(input_ids, start=1, end=2) feeding the 'ends' of the causal conv Slice in both layers "
    "(237 nodes)",
    "no node metadata at all",
]
MINIMAL_TS = [
    "no Cast and no Shape nodes; names without 'backbone' ('/layers.l/...', 'embedding.weight', "
    "'layers.l.norm.weight', 'layers.l.mixer.D', 'norm_f.weight')",
    "RMSNorm: Pow(x,2) -> ReduceMean(axes=[-1]) -> Add(eps) -> Sqrt -> Div(1.0, .) -> Mul(x, .) -> "
    "Mul(., weight [I: H]) with the weight SECOND (4.40: first), no Casts",
    "in_proj: MatMul on [B,S,H] -> Split(split=[D,D] Constant, axis=-1) channel-last into x and res "
    "(4.40: Transpose then a Shape-driven Slice pair on axis 1)",
    "conv between two Transposes: Transpose(perm=[0,2,1]) -> Conv(W [I: Dx1xK] 'layers.l.mixer."
    "conv1d.weight', bias) -> Slice(axis 2, ends [S]) -> Transpose(perm=[0,2,1]); the conv SiLU, "
    "x_proj, dt_proj, the scan input u, the gate SiLU and out_proj all work on [B,S,D] (channel-last; "
    "no Transpose before x_proj or out_proj)",
    "dt, B, C: three Slice nodes on the x_proj output (last axis, [0,R), [R,R+N), [R+N,R+2N)), no Split",
    "dt_proj: MatMul(dt, W^T [I: RxD]) -> Add(bias [I: D] FIRST, .) -> Softplus on [B,S,D] (no "
    "Transpose)",
    "discretisation as Einsum: deltaA = Exp(Einsum 'bld,dn->bldn'(delta, A)) with A = Neg(Exp(A_log "
    "[I: DxN])) (no Unsqueezes); deltaB_u = Einsum 'bld,bln,bld->bldn'(delta, B, u) (3 operands; "
    "4.40: Mul(Unsqueeze(dt), Cast(Unsqueeze(B))) then Mul(., Cast(Unsqueeze(x))))",
    "recurrence: time is axis 1 of [B,L,D,N]: h_t = Add(Mul(Gather(deltaA, t, axis=1), h_{t-1}), "
    "Gather(deltaB_u, t, axis=1)), step 0 Mul(Gather(deltaA,0), Constant zeros [B,D,N]); output "
    "y_t = Einsum 'bdn,bn->bd'(h_t, Gather(C, t, axis=1)) (4.40: Unsqueeze(C_t) -> MatMul -> "
    "Gather column 0); no Cast in the chain",
    "stack: Unsqueeze(y_t, axes=[1]) -> Concat(axis=1) -> [B,L,D] (4.40: axis -1, [B,D,S])",
    "D skip: Mul(u [B,L,D], D [I: D], the 1-D parameter as is) then Add(stack, Dskip) (4.40: D as "
    "[1,D,1])",
    "residual Add(mixer_out, x) with the residual SECOND (4.40: first)",
    "tied head: MatMul(., [I: HxV] transposed copy) gives 'logits' directly (no Cast)",
    "Einsum ops: 2 + 2 + 8 per layer (20)",
]
MINIMAL_DYN = [
    "the minimal structure (channel-last, Einsum discretisation and output, Slices for dt/B/C, "
    "time axis 1, weight-second norm Mul, residual second, 1-D D) in dynamo form: opset 18 / IR 10, "
    "no Constant nodes, Reciprocal(Sqrt), ReduceMean axes input, value_info",
    "in_proj Split(axis=2, sizes [D,D] [I]) (2 outputs, sizes input, not num_outputs)",
    "dt/B/C Slices with initializer bounds; dt_proj MatMul(dt, W^T) -> Add(., bias) bias SECOND -> "
    "Softplus + Greater(.,20) + Where",
    "A folded: Einsum 'bld,dn->bldn'(delta, 'neg' [I: DxN] = -exp(A_log)), no Exp/Neg on A_log",
    "Einsum kept as Einsum (20), not decomposed; zero initial state initializer 'zeros' [B,D,N]",
    "no node metadata",
]
FALCON_TS = [
    "everything listed for hf5_tiny (same transformers 5.x mixer code path)",
    "per layer, three weightless RMSNorms right after the x_proj Split, one per output: Cast(to=FLOAT) "
    "-> Pow(.,2) -> ReduceMean(axes=[-1]) -> Add(., eps 1e-6) -> Sqrt -> Div(1.0, .) -> "
    "Mul(cast_x, .), no weight Mul and no trailing Cast; dt norm over R (=2) values, B and C norms "
    "over N; scopes '/mixer/dt_layernorm', '/mixer/b_layernorm', '/mixer/c_layernorm'; their outputs "
    "feed the dt_proj Transpose, the B Unsqueeze and the per-step C Gathers",
    "so Div(1, Sqrt) appears 3L + L + 1 = 9 times (L+1 are the residual-stream norms, eps 1e-5, with a "
    "weight Mul); the weightless ones are on the selection path (detached by the SSM rule)",
    "429 nodes (Constant 100, Cast 44)",
]
FALCON_DYN = [
    DYNAMO_BASE,
    "the hf5_tiny_dynamo differences (dt_proj weight-first MatMul + [D,1] bias, Transpose(Transpose) "
    "u, Conv weight 'unsqueeze*')",
    "per layer three weightless norms after the x_proj Split: Pow -> ReduceMean -> Add(eps 1e-6 [I] "
    "shared) -> Sqrt -> Reciprocal -> Mul(x, rsqrt), no Cast, no weight",
    "269 nodes; no node metadata",
]
ONNXSIM = [
    "source: fixtures/tiny_convbias.onnx (4.40 TorchScript); 235 nodes (source 363)",
    "all 32 Cast removed; the Shape-driven chunk folded: two Slices with initializer starts/ends (no "
    "Shape/Gather/Add/Div/Mul index arithmetic)",
    "Constant nodes become initializers except 4 shared Constant nodes: 1.0 (the Div(1, Sqrt) "
    "numerator), 2.0 (Pow), eps 1e-5 and the zero state [B,D,N]",
    "A folded: -exp(A_log) as [I: 1xDx1xN] (Mul operand 0), no Exp/Neg on A_log (Exp 2 vs 4)",
    "dt_proj: Reshape(dt_in [B,S,R] -> [B*S,R]) -> Gemm(., W^T [I: RxD], bias [I: D], alpha=beta=1, "
    "transA=transB=0) -> Reshape(-> [B,S,D]) -> Softplus -> Transpose (no MatMul + Add)",
    "x_proj Split sizes [R,N,N] as an initializer; rsqrt still Div(1.0, Sqrt); norm weight first",
    "lm_head MatMul output is 'logits' directly (no Cast pair); value_info for 238 tensors",
]
ORT_BASIC = [
    "source: fixtures/tiny_convbias.onnx (4.40 TorchScript); 231 nodes",
    "onnxsim-like folding: Casts removed except one final Cast(to=FLOAT) producing 'logits' after the "
    "lm_head MatMul; no Constant nodes (all initializers, scalar ones shared by all layers, e.g. "
    "'/backbone/norm_f/Constant_output_0' = 2.0 for every Pow); chunk Slice bounds folded; A folded "
    "[I: 1xDx1xN]; dt_proj as Reshape([B*S,R] 'gemm_input_shape') -> Gemm(., W^T, bias) -> "
    "Reshape([B,S,D] 'gemm_output_shape')",
    "RMSNorm: Mul(x, Div(1, Sqrt(v))) rewritten to Div(x, Sqrt(mean(x^2)+eps)) -- no rsqrt tensor, "
    "x is the Div numerator -- then Mul(weight, .) weight first",
    "transpose optimizer: the gate half is sliced from the in_proj MatMul output BEFORE the Transpose "
    "(Slice(in_proj [B,S,2D], starts [D], ends [2D], axes [2] 'const_transpose_optimizer')), the gate "
    "SiLU Mul(z, Sigmoid(z)) runs channel-last [B,S,D], then Transpose(perm=[0,2,1]) before the gate "
    "Mul (10 Transposes); the x half still Transpose -> Slice -> Conv",
    "node order changed (the D-skip Mul placed before x_proj); some outputs renamed "
    "('/mixer/act_1/Mul', '/mixer/Slice_1')",
    "opset_import lists 9 domains (ai.onnx 17, ai.onnx.ml 5, ai.onnx.training 1, ai.onnx.preview 1, "
    "com.microsoft 1, ai.onnx.preview.training 1, com.microsoft.experimental 1, "
    "com.microsoft.nchwc 1, org.pytorch.aten 1) although only default-domain ops are used",
]
ORT_EXT = [
    "everything listed for ort_basic, plus:",
    "RMSNorm fused to SimplifiedLayerNormalization(x, weight) axis=-1, epsilon=1e-5, stash_type=1 in "
    "the DEFAULT domain '' (an onnxruntime contrib op registered in the ONNX domain; onnx.checker "
    "rejects the file: 'No Op registered for SimplifiedLayerNormalization with domain_version of "
    "17'); L+1 = 3, no Pow/ReduceMean/Sqrt/Div left",
    "SiLU fused to com.microsoft::QuickGelu(x) alpha=1.0 (= x*sigmoid(alpha*x)); no Sigmoid left",
    "x_proj and out_proj: Transpose + MatMul fused to com.microsoft::FusedMatMul(x [B,D,S], W^T [I], "
    "transA=1, transB=0, alpha=1.0, transBatchA=0, transBatchB=0) (6 Transposes left); in_proj and "
    "lm_head stay MatMul",
    "per-step Gather(dA, t, axis=2) and Gather(dBu, t, axis=2) replaced by one Split(axis=2, "
    "split=[1]*S [I]) per tensor and layer + Squeeze(axes=[2] [I]) per step (4 Split with 8 "
    "outputs, 32 Squeeze); C's Gathers (axis 1) and the y column Gathers stay",
]
ORT_EXT_DYN = [
    "source: fixtures/tiny_convbias_dynamo.onnx (4.40 dynamo; its own differences, see DYNAMO_BASE "
    "under hf5_tiny_dynamo); 231 nodes",
    "QuickGelu (SiLU), FusedMatMul transA=1 (x_proj, out_proj), Split+Squeeze per step, dt_proj "
    "Reshape -> Gemm -> Reshape, as ort_extended",
    "RMSNorms NOT fused (Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul(x,.), Mul(w,.) stay); "
    "Softplus + Greater + Where stay",
    "transpose optimizer: in_proj Split(axis=2, num_outputs=2) on the channel-last MatMul output; "
    "gate QuickGelu on [B,S,D] then Transpose; x half Transpose -> Conv",
    "opset_import lists the same 9 domains (ai.onnx 18); value_info kept",
]
OPSET23 = [
    "source: fixtures/tiny_convbias_dynamo.onnx (4.40 dynamo, see its differences)",
    "each RMSNorm chain (Pow, ReduceMean, Add(eps), Sqrt, Reciprocal, Mul(x, .), Mul(w, .)) is one "
    "RMSNormalization(x, scale=w [I: H]) axis=-1, epsilon=9.999999747378752e-06, stash_type=1 whose "
    "output is the old weight-Mul output; 3 nodes",
    "opset 23, IR 11 (every other node unchanged); node metadata dropped",
]
OPSET24 = [
    "source: fixtures/tiny_convbias_dynamo.onnx (4.40 dynamo, see its differences)",
    "each SiLU Mul(x, Sigmoid(x)) is one Swish(x) alpha=1.0 (output name = the old Mul output); "
    "4 nodes, no Sigmoid left",
    "opset 24, IR 12 (every other node unchanged); node metadata dropped",
]
DIFFS = {
    "hf5_tiny": HF5_TS, "hf5_tiny_dynamo": HF5_DYN,
    "dynbatch": DYNBATCH_TS, "dynbatch_dynamo": DYNBATCH_DYN,
    "dynboth": DYNBOTH_TS, "dynboth_dynamo": DYNBOTH_DYN,
    "minimal": MINIMAL_TS, "minimal_dynamo": MINIMAL_DYN,
    "falcon_mamba": FALCON_TS, "falcon_mamba_dynamo": FALCON_DYN,
    "onnxsim": ONNXSIM, "ort_basic": ORT_BASIC, "ort_extended": ORT_EXT,
    "ort_extended_dynamo": ORT_EXT_DYN, "opset23_rmsnorm": OPSET23, "opset24_swish": OPSET24,
}


def main():
    import onnx
    import onnxruntime
    import transformers

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    only = set(sys.argv[1:])
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}")
    log("references: mambalrp_* = stabilized SiLU rule (the default), mambalrp_exact_* = exact SiLU "
        "rule, gi_* = gradient x input; R_bias = conv-bias + stabilized-SiLU-offset relevance; "
        "conservation = max_b |sum(R)+R_bias-f|/|f|; logits checks are max|ONNX - PyTorch| / max|PyTorch|")
    hf5 = build_hf5()
    ids = make_fixtures.make_inputs(HF5_SPEC)
    steps = [
        ("hf5", lambda: variant_hf5(hf5, ids)),
        ("dyn", lambda: variant_dynamic(hf5, ids)),
        ("minimal", lambda: variant_minimal(hf5, ids)),
        ("falcon", variant_falcon),
        ("onnxsim", variant_onnxsim),
        ("ort", lambda: (variant_ort("basic"), variant_ort("extended"),
                         variant_ort("extended", "tiny_convbias_dynamo.onnx", "ort_extended_dynamo"))),
        ("opset", lambda: (variant_opset("opset23_rmsnorm", rewrite_rmsnorm),
                           variant_opset("opset24_swish", rewrite_swish))),
    ]
    for key, fn in steps:
        if only and key not in only:
            continue
        fn()
    log("== differences from the transformers 4.40 TorchScript export, per variant")
    for name in DIFFS_PENDING:
        if name in DIFFS:
            log(f" -- {name}")
            for it in DIFFS[name]:
                log(f"    - {it}")
    log("== files")
    for line in SUMMARY:
        log("  " + line)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT) if f != "REPORT.txt")
    log(f"total variant fixture bytes (excluding REPORT.txt): {total}")
    if not only:
        with open(os.path.join(OUT, "REPORT.txt"), "w") as fh:
            fh.write("\n".join(REPORT) + "\n")


if __name__ == "__main__":
    main()
