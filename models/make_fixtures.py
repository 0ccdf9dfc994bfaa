"""Regenerate the ONNX + reference fixtures under models/fixtures/.

Regeneration commands (from the repository root); the scripts write disjoint files, run
them all, in this order, to regenerate every fixture (make_fixtures.py after the other two
transformers-4.40 scripts: the last line of its REPORT.txt sums the bytes of the folder;
make_variant_fixtures.py last: it derives some variants from tiny_convbias*.onnx and writes
models/fixtures/variants/ with its own REPORT.txt):

    bash models/setup.sh          # models/.venv: transformers 4.40 (requirements.txt)
    bash models/setup.sh 5x       # models/.venv5: transformers 5.x (requirements-5x.txt)
    models/.venv/bin/python models/make_length_fixtures.py
    models/.venv/bin/python models/make_half_fixtures.py
    models/.venv/bin/python models/make_fixtures.py
    models/.venv5/bin/python models/make_variant_fixtures.py

For each fixture in FIXTURES this builds a random-init Hugging Face ``MambaForCausalLM``
(fixed seeds, parameters perturbed away from HF's structured init), exports it
with both exporters at batch 2, seq 8 (mid_biglogits: seq 32), static shapes:

* TorchScript: ``torch.onnx.export(..., dynamo=False, opset_version=17)`` -> ``<name>.onnx``
* dynamo:      ``torch.onnx.export(..., dynamo=True, opset_version=18, external_data=False)``
               -> ``<name>_dynamo.onnx`` (the per-node ``pkg.torch.onnx.stack_trace``
               metadata entries are dropped afterwards: they hold absolute source paths,
               are most of the bytes, and make the file depend on the checkout location;
               every other metadata entry is kept, except in mid_biglogits_dynamo.onnx,
               which has no node metadata at all, to keep it small)

and writes ``<name>.ref.npz`` with

* ``input_ids`` [B,S] int64, ``logits`` [B,S,V] (HF), ``target`` [B] int64 (argmax of the
  last position), ``target_logit`` [B] (f);
* ``mambalrp_relevance`` [B,S], ``mambalrp_relevance_embedding`` [B,S,H],
  ``mambalrp_relevance_bias`` [B]: all four rules, stabilized SiLU rule (the official
  MambaLRP form, models/mamba_lrp.py's default); R_bias is the relevance absorbed by the
  conv biases and the stabilized rule's offsets, so sum(R) + R_bias = f;
* ``gi_relevance``, ``gi_relevance_embedding``: plain gradient x input;
* ``mambalrp_exact_relevance``, ``mambalrp_exact_relevance_embedding``,
  ``mambalrp_exact_relevance_bias``: all four rules, exact SiLU rule ``x * sg(sigmoid(x))``.

Fixtures: tiny_convbias, tiny_zerobias, small_untied, tiny_bigxproj (x_proj scaled: the SSM
rule matters), tiny_smallsilu (SiLU inputs |x| <= 8e-6 engineered at a few sites, see
engineer_small_silu: the stabilized and exact SiLU rules differ by ~1e-2 of max|R| there,
while float32 rounding moves the references by ~1e-7 only), mid_biglogits (max|logit| ~38,
explained logits ~26, seq 32).

It checks our reference forward and the exported graphs in onnxruntime against the HF
logits, checks conservation (both SiLU rules), compares the float32 references with
float64 ones (``model.double()``), checks the graphs' structure against
shared/EXPORTED-GRAPHS.md, and writes a summary (op histograms, checks) to
``models/fixtures/REPORT.txt``.

Deterministic: the same command gives the same numbers (single-threaded torch,
fixed seeds) and the same bytes (save_npz).
"""

from __future__ import annotations

import collections
import io
import os
import sys
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mamba_lrp  # noqa: E402

OUT = os.path.join(HERE, "fixtures")
BATCH, SEQ = 2, 8

FIXTURES = [
    # name, layers, hidden, state, dt_rank, vocab, tied, conv_bias, xproj_scale, model seed;
    # optional: seq (default SEQ), lm_head_scale (untied LM head multiplied by it),
    # small_silu (engineer tiny SiLU inputs, see engineer_small_silu), ort_atol (default 1e-5),
    # dynamo_node_metadata (default True; False drops all node metadata from <name>_dynamo.onnx)
    dict(name="tiny_convbias", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
         tied=True, conv_bias="random", xproj_scale=1.0, seed=1001),
    dict(name="tiny_zerobias", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
         tied=True, conv_bias="zero", xproj_scale=1.0, seed=1002),
    dict(name="small_untied", layers=3, hidden=64, state=16, dt_rank=4, vocab=256,
         tied=False, conv_bias="zero", xproj_scale=1.0, seed=1003),
    # same weights as tiny_convbias, x_proj scaled 6x
    dict(name="tiny_bigxproj", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
         tied=True, conv_bias="random", xproj_scale=6.0, seed=1001),
    # tiny_convbias' shape; several SiLU inputs (conv and gate branch, both layers) set to
    # |x| <= 8e-6 on purpose for the fixture's input ids: the stabilized and the exact SiLU
    # rule then differ visibly, while float32 rounding stays far below that difference
    dict(name="tiny_smallsilu", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
         tied=True, conv_bias="random", xproj_scale=1.0, seed=1005, small_silu=True),
    # logits of LM magnitude (max|logit| ~38; the untied LM head is scaled x16), longer
    # sequence. Its dynamo graph is written without node metadata: at S=32 the metadata
    # (namespace, class_hierarchy, fx_node, name_scopes) would be 580 KB of its 1.09 MB.
    dict(name="mid_biglogits", layers=2, hidden=64, state=16, dt_rank=4, vocab=256,
         tied=False, conv_bias="random", xproj_scale=1.0, seed=1007, seq=32,
         lm_head_scale=16.0, ort_atol=1e-4, dynamo_node_metadata=False),
]

SINGLE_RULES = ["silu", "norm", "ssm", "gate"]

REPORT: list[str] = []


def log(*a):
    line = " ".join(str(x) for x in a)
    print(line, flush=True)
    REPORT.append(line)


def build_model(spec):
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], state_size=spec["state"],
        num_hidden_layers=spec["layers"], expand=2, conv_kernel=4,
        time_step_rank=spec["dt_rank"], use_conv_bias=True, use_bias=False,
        tie_word_embeddings=spec["tied"], use_cache=False,
    )
    torch.manual_seed(spec["seed"])
    model = MambaForCausalLM(cfg).eval()
    if spec.get("explicit_init"):
        explicit_init(model, spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"] + 7)

    def noise(t, scale):
        return torch.randn(t.shape, generator=g, dtype=t.dtype) * scale

    with torch.no_grad():
        for layer in model.backbone.layers:
            mx = layer.mixer
            layer.norm.weight.add_(noise(layer.norm.weight, 0.2))
            mx.A_log.add_(noise(mx.A_log, 0.2))
            mx.D.add_(noise(mx.D, 0.2))
            mx.dt_proj.bias.add_(noise(mx.dt_proj.bias, 0.2))
            if spec["conv_bias"] == "zero":
                mx.conv1d.bias.zero_()
            else:
                # default PyTorch Conv1d init is already random; add noise so it is not
                # tied to torch's init scheme either
                mx.conv1d.bias.add_(noise(mx.conv1d.bias, 0.1))
            mx.x_proj.weight.mul_(spec["xproj_scale"])
        model.backbone.norm_f.weight.add_(noise(model.backbone.norm_f.weight, 0.2))
        if not spec["tied"]:
            assert model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr()
        if spec.get("lm_head_scale"):
            assert not spec["tied"], "lm_head_scale would scale the tied embeddings too"
            model.lm_head.weight.mul_(spec["lm_head_scale"])
    model.small_silu_sites = engineer_small_silu(model, make_inputs(spec)) if spec.get("small_silu") else []
    return model


def explicit_init(model, seed):
    """Draw every weight from our own seeded generator, with the schemes transformers 4.40
    leaves in place (PyTorch's defaults for Linear and Conv1d, Mamba's own for A, D and dt), so
    the model no longer depends on the installed transformers: 5.x initializes every Linear
    with N(0, initializer_range = 0.1), which makes in_proj and x_proj 5-7x larger than 4.40's
    and the random model ill-conditioned (float16 weights move its logits by half their size
    at 64 tokens)."""
    g = torch.Generator().manual_seed(seed + 11)

    def uniform(t, bound):
        t.copy_((torch.rand(t.shape, generator=g, dtype=torch.float64) * 2 - 1).to(t.dtype) * bound)

    def linear(weight):  # PyTorch's default: U(+-1/sqrt(fan_in))
        fan_in = weight[0].numel()
        uniform(weight, fan_in**-0.5)

    cfg = model.config
    with torch.no_grad():
        emb = model.backbone.embeddings.weight
        emb.copy_(torch.randn(emb.shape, generator=g, dtype=torch.float64).to(emb.dtype) * cfg.initializer_range)
        for layer in model.backbone.layers:
            mx = layer.mixer
            layer.norm.weight.fill_(1.0)
            linear(mx.in_proj.weight)
            linear(mx.conv1d.weight)
            uniform(mx.conv1d.bias, mx.conv1d.weight[0].numel() ** -0.5)
            linear(mx.x_proj.weight)
            uniform(mx.dt_proj.weight, cfg.time_step_rank**-0.5 * cfg.time_step_scale)
            # dt = exp(U(log dt_min, log dt_max)) floored, stored as softplus^-1(dt)
            lo, hi = np.log(cfg.time_step_min), np.log(cfg.time_step_max)
            dt = torch.exp(torch.rand(mx.dt_proj.bias.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo)
            dt = dt.clamp(min=cfg.time_step_floor)
            mx.dt_proj.bias.copy_((dt + torch.log(-torch.expm1(-dt))).to(mx.dt_proj.bias.dtype))
            state = torch.arange(1, mx.A_log.shape[1] + 1, dtype=torch.float64)
            mx.A_log.copy_(torch.log(state).expand(mx.A_log.shape).to(mx.A_log.dtype))
            mx.D.fill_(1.0)
            linear(mx.out_proj.weight)
            for lin in (mx.in_proj, mx.x_proj, mx.out_proj):  # dt_proj's bias is set above
                if lin.bias is not None:
                    lin.bias.zero_()
        model.backbone.norm_f.weight.fill_(1.0)
        if not cfg.tie_word_embeddings:
            linear(model.lm_head.weight)


def seq_len(spec):
    return spec.get("seq", SEQ)


def make_inputs(spec):
    g = torch.Generator().manual_seed(spec["seed"] + 12345)
    return torch.randint(0, spec["vocab"], (BATCH, seq_len(spec)), generator=g, dtype=torch.int64)


# ----------------------------------------------------------------------------------
# tiny_smallsilu: SiLU inputs below 1e-5 on purpose
# ----------------------------------------------------------------------------------

# SiLU input values set at the engineered sites (per layer, in site order)
SMALL_SILU_CONV_TARGETS = (0.0, 3e-6, -8e-6)
SMALL_SILU_GATE_TARGETS = (-5e-6, 2e-6)
# a site's channel is scaled by this on the SiLU-input side and by its inverse on the
# out_proj side (so its share of the output keeps its size)
SMALL_SILU_SCALE = 1e-3


def _mixer_site_inputs(model, ids, layer):
    """HF forward with hooks: (conv-branch SiLU input x [B,D,S] incl. the conv bias,
    gate-branch SiLU input z [B,D,S], in_proj input hn [B,S,H]) of ``layer``."""
    cap = {}
    mx = model.backbone.layers[layer].mixer
    d_inner = mx.intermediate_size

    def conv_hook(mod, inp, out):
        cap["x"] = out.detach()

    def in_proj_hook(mod, inp, out):
        cap["p"] = out.detach()
        cap["hn"] = inp[0].detach()

    handles = [mx.conv1d.register_forward_hook(conv_hook),
               mx.in_proj.register_forward_hook(in_proj_hook)]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return cap["x"][..., :ids.shape[1]], cap["p"].transpose(1, 2)[:, d_inner:, :], cap["hn"]


def _silu_site_grads(model, ids):
    """Per layer: gradient of the explained logits (mambalrp, stabilized rule, default
    target) at the outputs of the conv-branch and the gate-branch SiLU, each [B,D,S]."""
    E = mamba_lrp.embed(model, ids).detach().requires_grad_(True)
    leaves: list = []
    logits = mamba_lrp.forward_from_embeddings(model, E, mamba_lrp.ALL_RULES, leaves, "stabilized")
    target = logits[:, -1].argmax(-1)
    f = logits[torch.arange(ids.shape[0]), -1, target]
    grads = torch.autograd.grad(f.sum(), leaves)
    # leaves per layer: conv bias, conv-branch SiLU offset, gate-branch SiLU offset
    per = 3 if model.backbone.layers[0].mixer.conv1d.bias is not None else 2
    return [(grads[per * i + per - 2], grads[per * i + per - 1]) for i in range(len(model.backbone.layers))]


def engineer_small_silu(model, ids):
    """Sets, for ``ids``, a few SiLU inputs at the last position to tiny values.

    Per layer (layer 0 first: changing a layer does not change its own SiLU inputs, only
    later layers'), at position t = S-1:

    * conv branch, one site per value in SMALL_SILU_CONV_TARGETS: channel c's conv weights
      are scaled by SMALL_SILU_SCALE (so the conv sum m = conv_nobias(u)[b, c, t] is ~1e-3
      and its float rounding ~1e-10), and the conv bias is set to ``target - m``, so that
      x[b, c, t] = target;
    * gate branch, one site per value in SMALL_SILU_GATE_TARGETS: the in_proj row of gate
      channel c is scaled by SMALL_SILU_SCALE and then moved along hn[b, t] so that
      z[b, c, t] = target.

    Each site's out_proj column is multiplied by 1/SMALL_SILU_SCALE, so the channel's
    relevance share keeps its size. Sites are the (b, c) with the largest |gradient x
    conv sum| (conv) / |gradient| * |row| * |hn| (gate), distinct channels per layer. Three
    correction passes measure the value in the float32 HF forward and fix the bias / row.
    Returns a list of dicts describing the sites."""
    S = ids.shape[1]
    t = S - 1
    sites = []
    for layer in range(len(model.backbone.layers)):
        mx = model.backbone.layers[layer].mixer
        d_inner = mx.intermediate_size
        x, z, hn = _mixer_site_inputs(model, ids, layer)
        g_conv, g_gate = _silu_site_grads(model, ids)[layer]
        with torch.no_grad():
            bias = mx.conv1d.bias
            w_z = mx.in_proj.weight[d_inner:]
            m = x - bias[None, :, None]
            used = set()

            def pick(score, n):
                out = []
                for k in torch.argsort(score.flatten(), descending=True).tolist():
                    b, c = divmod(k, d_inner)
                    if c not in used:
                        used.add(c)
                        out.append((b, c))
                        if len(out) == n:
                            return out
                raise AssertionError("not enough channels")

            conv_sites = pick((g_conv[:, :, t] * m[:, :, t]).abs(), len(SMALL_SILU_CONV_TARGETS))
            gate_sites = pick(g_gate[:, :, t].abs() * w_z.norm(dim=1)[None, :]
                              * hn[:, t].norm(dim=-1)[:, None], len(SMALL_SILU_GATE_TARGETS))
            for _, c in conv_sites:
                mx.conv1d.weight[c] *= SMALL_SILU_SCALE
                mx.out_proj.weight[:, c] /= SMALL_SILU_SCALE
            for _, c in gate_sites:
                w_z[c] *= SMALL_SILU_SCALE
                mx.out_proj.weight[:, c] /= SMALL_SILU_SCALE
            for _ in range(3):
                x, z, hn = _mixer_site_inputs(model, ids, layer)
                for (b, c), target in zip(conv_sites, SMALL_SILU_CONV_TARGETS):
                    bias[c] += target - x[b, c, t]
                for (b, c), target in zip(gate_sites, SMALL_SILU_GATE_TARGETS):
                    h = hn[b, t].double()
                    w_z[c] += ((target - z[b, c, t].double()) / h.dot(h) * h).float()
            x, z, hn = _mixer_site_inputs(model, ids, layer)
            for (b, c), target in zip(conv_sites, SMALL_SILU_CONV_TARGETS):
                sites.append(dict(layer=layer, branch="conv", b=b, c=c, t=t, target=target,
                                  value=float(x[b, c, t]), summand=float(x[b, c, t] - bias[c])))
            for (b, c), target in zip(gate_sites, SMALL_SILU_GATE_TARGETS):
                sites.append(dict(layer=layer, branch="gate", b=b, c=c, t=t, target=target,
                                  value=float(z[b, c, t]),
                                  summand=float((w_z[c] * hn[b, t]).abs().max())))
    for site in sites:
        assert abs(site["value"]) < 1e-5 and abs(site["value"] - site["target"]) < 1e-9, site
    return sites


def save_npz(path, **arrays):
    """Like np.savez, but byte-deterministic (fixed zip timestamps, sorted order)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in arrays:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def export(model, ids, name, dynamo_node_metadata=True):
    ts_path = os.path.join(OUT, f"{name}.onnx")
    dy_path = os.path.join(OUT, f"{name}_dynamo.onnx")
    # return_dict=False -> the model returns the tuple (logits,) (no cache, no hidden states)
    model.config.return_dict = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (ids,), ts_path, dynamo=False, opset_version=17,
                              input_names=["input_ids"], output_names=["logits"])
            buf = io.StringIO()
            # the dynamo exporter prints progress; keep stdout readable
            import contextlib
            with contextlib.redirect_stdout(buf):
                torch.onnx.export(model, (ids,), dy_path, dynamo=True, opset_version=18,
                                  external_data=False, input_names=["input_ids"],
                                  output_names=["logits"])
    finally:
        model.config.return_dict = True
    drop_stack_traces(dy_path, all_node_metadata=not dynamo_node_metadata)
    return ts_path, dy_path


def drop_stack_traces(path, all_node_metadata=False):
    """Removes the dynamo exporter's per-node stack traces (absolute source paths); with
    ``all_node_metadata`` every node metadata entry."""
    import onnx

    m = onnx.load(path)
    for node in m.graph.node:
        keep = [] if all_node_metadata else \
            [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(m, path)


def ort_logits(path, ids):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input_ids": ids.numpy()})[0]


def ort_silu_inputs(path, ids):
    """The inputs of every Sigmoid node (the SiLU inputs), computed by onnxruntime."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    names = [n.input[0] for n in m.graph.node if n.op_type == "Sigmoid"]
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(names, {"input_ids": ids.numpy()})


def check_small_silu_sites_in_ort(path, model, ids):
    """For each engineered site: onnxruntime's value of the SiLU input, and the largest
    |onnxruntime - PyTorch| at the sites. The graph's SiLU input tensor of a site is the one
    (among the Sigmoid inputs of shape [B,D,S]) closest to the PyTorch tensor."""
    outs = [o for o in ort_silu_inputs(path, ids) if o.ndim == 3]
    worst = 0.0
    values = []
    for site in model.small_silu_sites:
        x, z, _ = _mixer_site_inputs(model, ids, site["layer"])
        ref = (x if site["branch"] == "conv" else z).numpy()
        cands = [o for o in outs if o.shape == ref.shape]
        o = min(cands, key=lambda o: float(np.abs(o - ref).max()))
        v = float(o[site["b"], site["c"], site["t"]])
        values.append(v)
        worst = max(worst, abs(v - site["value"]))
    return values, worst


# ----------------------------------------------------------------------------------
# structural checks against shared/EXPORTED-GRAPHS.md
# ----------------------------------------------------------------------------------

def _const_value(m, name, producers):
    import onnx.numpy_helper as nh

    for init in m.graph.initializer:
        if init.name == name:
            return nh.to_array(init)
    p = producers.get(name)
    if p is not None and p.op_type == "Constant":
        for a in p.attribute:
            if a.name == "value":
                return nh.to_array(a.t)
    return None


def inspect_graph(path, spec, kind):
    import onnx

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    L, S, N, R = spec["layers"], seq_len(spec), spec["state"], spec["dt_rank"]
    nodes = list(g.node)
    producers = {o: n for n in nodes for o in n.output}
    hist = collections.Counter(n.op_type for n in nodes)
    opset = {o.domain: o.version for o in m.opset_import}
    issues = []

    log(f"  [{kind}] {os.path.basename(path)}: {len(nodes)} nodes, ir={m.ir_version}, "
        f"opset={opset}, producer={m.producer_name} {m.producer_version}, "
        f"size={os.path.getsize(path)} B")
    log("    ops: " + ", ".join(f"{k} {v}" for k, v in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))))
    log(f"    inputs: {[(i.name, i.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]) for i in g.input]}"
        f" outputs: {[(o.name, o.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]) for o in g.output]}")

    for op in ("Loop", "Scan", "If"):
        if hist.get(op):
            issues.append(f"{op} present")
    # SiLU: Mul(x, Sigmoid(x))
    silu_first = silu_second = 0
    silu_muls = []
    for n in nodes:
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        for pos in (0, 1):
            p = producers.get(n.input[1 - pos])
            if p is not None and p.op_type == "Sigmoid" and p.input[0] == n.input[pos]:
                silu_muls.append(n)
                if pos == 0:
                    silu_first += 1
                else:
                    silu_second += 1
    log(f"    SiLU Mul(x,Sigmoid(x)): {silu_first} with x first, {silu_second} with x second "
        f"(expect {2 * L} / 0)")
    if silu_first != 2 * L or silu_second:
        issues.append(f"SiLU count/order {silu_first}/{silu_second}")
    # rsqrt
    div_rsqrt = recip_rsqrt = 0
    for n in nodes:
        if n.op_type == "Div":
            p = producers.get(n.input[1])
            c = _const_value(m, n.input[0], producers)
            if p is not None and p.op_type == "Sqrt" and c is not None and np.all(c == 1.0):
                div_rsqrt += 1
        if n.op_type == "Reciprocal":
            p = producers.get(n.input[0])
            if p is not None and p.op_type == "Sqrt":
                recip_rsqrt += 1
    exp_div, exp_rec = (L + 1, 0) if kind == "ts" else (0, L + 1)
    log(f"    rsqrt: Div(1,Sqrt) {div_rsqrt}, Reciprocal(Sqrt) {recip_rsqrt} (expect {exp_div}/{exp_rec})")
    if (div_rsqrt, recip_rsqrt) != (exp_div, exp_rec):
        issues.append(f"rsqrt forms Div {div_rsqrt} Reciprocal {recip_rsqrt}")
    # norm chain details: weight first in the last Mul
    w_names = {f"backbone.layers.{i}.norm.weight" for i in range(L)} | {"backbone.norm_f.weight"}
    w_first = w_second = 0
    for n in nodes:
        if n.op_type == "Mul":
            if n.input[0] in w_names:
                w_first += 1
            elif n.input[1] in w_names:
                w_second += 1
    log(f"    norm weight Mul: weight first {w_first}, second {w_second} (expect {L + 1}/0)")
    if (w_first, w_second) != (L + 1, 0):
        issues.append(f"norm weight operand order {w_first}/{w_second}")
    # 3-output Split
    splits3 = [n for n in nodes if n.op_type == "Split" and len(n.output) == 3]
    sizes = []
    for n in splits3:
        axis = [a.i for a in n.attribute if a.name == "axis"]
        sv = _const_value(m, n.input[1], producers) if len(n.input) > 1 else None
        sizes.append((None if sv is None else sv.tolist(), axis))
    log(f"    3-output Splits: {len(splits3)} (expect {L}), sizes/axis {sizes}")
    if len(splits3) != L or any(s[0] != [R, N, N] for s in sizes):
        issues.append(f"x_proj split {sizes}")
    splits2 = [n for n in nodes if n.op_type == "Split" and len(n.output) == 2]
    log(f"    2-output Splits: {len(splits2)} (expect {L if kind == 'dynamo' else 0})")
    # gate Mul: Mul(Add(...), silu) with silu second
    silu_outs = {n.output[0] for n in silu_muls}
    gate_y_first = gate_y_second = 0
    for n in nodes:
        if n.op_type == "Mul" and n not in silu_muls:
            if n.input[1] in silu_outs and producers.get(n.input[0]) is not None \
                    and producers[n.input[0]].op_type == "Add":
                gate_y_first += 1
            elif n.input[0] in silu_outs and producers.get(n.input[1]) is not None \
                    and producers[n.input[1]].op_type == "Add":
                gate_y_second += 1
    log(f"    gate Mul(Add, SiLU): y first {gate_y_first}, y second {gate_y_second} (expect {L}/0)")
    if (gate_y_first, gate_y_second) != (L, 0):
        issues.append(f"gate operand order {gate_y_first}/{gate_y_second}")
    # Conv inputs / attributes
    convs = [n for n in nodes if n.op_type == "Conv"]
    conv_desc = []
    for n in convs:
        attrs = {a.name: (list(a.ints) if a.ints else a.i) for a in n.attribute}
        conv_desc.append((len(n.input), attrs.get("group"), attrs.get("pads"), attrs.get("kernel_shape")))
    log(f"    Conv (n_inputs, group, pads, kernel): {sorted(set(map(str, conv_desc)))}")
    exp_conv_in = 3 if (kind == "ts" or spec["conv_bias"] == "random") else 2
    if any(c[0] != exp_conv_in for c in conv_desc):
        issues.append(f"Conv inputs {conv_desc} (expect {exp_conv_in})")
    # dt_proj Add operand order around Softplus
    dt_bias_names = {f"backbone.layers.{i}.mixer.dt_proj.bias" for i in range(L)}
    dt_first = sum(1 for n in nodes if n.op_type == "Add" and n.input[0] in dt_bias_names)
    dt_second = sum(1 for n in nodes if n.op_type == "Add" and n.input[1] in dt_bias_names)
    exp_dt = (L, 0) if kind == "ts" else (0, L)
    log(f"    dt_proj bias Add: bias first {dt_first}, second {dt_second} (expect {exp_dt})")
    if (dt_first, dt_second) != exp_dt:
        issues.append(f"dt bias order {dt_first}/{dt_second}")
    # Cast
    casts = [n for n in nodes if n.op_type == "Cast"]
    cast_to = collections.Counter(a.i for n in casts for a in n.attribute if a.name == "to")
    exp_cast = L * (6 + S) + 4 if kind == "ts" else 0
    log(f"    Cast: {len(casts)} (to: {dict(cast_to)}; expect {exp_cast}, all to=FLOAT(1))")
    if len(casts) != exp_cast or set(cast_to) - {1}:
        issues.append(f"Cast count {len(casts)} to {dict(cast_to)}")
    # Identity
    idents = [(n.input[0], n.output[0]) for n in nodes if n.op_type == "Identity"]
    log(f"    Identity: {idents}")
    # embedding Gather
    emb = [n for n in nodes if n.op_type == "Gather" and n.input[1] == "input_ids"]
    log(f"    embedding Gather table: {[n.input[0] for n in emb]}")
    # node count formula
    if kind == "ts":
        c_L = {2: 163, 3: 236}.get(L)
        exp_nodes = None if c_L is None else c_L + (12 * L + 1) * S
        if spec["conv_bias"] == "zero":
            exp_nodes = None if exp_nodes is None else exp_nodes + (L - 1)  # doc: 1 (tiny) / 2 (small) extra Identity
    else:
        c_L = {2: 87, 3: 126}.get(L)
        exp_nodes = None if c_L is None else c_L + 9 * L * S
    log(f"    node count {len(nodes)} (doc formula: {exp_nodes}; zero-bias TS incl. Identity)")
    if exp_nodes is not None and len(nodes) != exp_nodes:
        issues.append(f"node count {len(nodes)} vs doc {exp_nodes}")
    # Softplus threshold form
    log(f"    Softplus {hist.get('Softplus', 0)}, Greater {hist.get('Greater', 0)}, Where {hist.get('Where', 0)}, "
        f"Exp {hist.get('Exp', 0)}, Neg {hist.get('Neg', 0)}, Shape {hist.get('Shape', 0)}")
    # metadata
    md_keys = collections.Counter(p.key for n in nodes for p in n.metadata_props)
    if md_keys:
        log(f"    node metadata keys: {dict(md_keys)}")
    vi = len(g.value_info)
    log(f"    value_info entries: {vi}; initializers: {len(g.initializer)}")
    log("    deviations from EXPORTED-GRAPHS.md: " + ("none" if not issues else "; ".join(issues)))
    return hist, issues


# ----------------------------------------------------------------------------------

def rel_max_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


def fmt(values, spec=".6f"):
    return [f"{v:{spec}}" for v in values.tolist()]


def conservation(ref):
    """|sum(R) + R_bias - f| / |f| per sample."""
    f = ref["target_logit"]
    return (ref["relevance"].sum(-1) + ref["relevance_bias"] - f).abs() / f.abs()


def reference_arrays(ref, prefix, embedding=True):
    """The arrays a .ref.npz holds for one rule set (float32)."""
    out = {f"{prefix}_relevance": ref["relevance"].detach().float().numpy()}
    if embedding:
        out[f"{prefix}_relevance_embedding"] = ref["relevance_embedding"].detach().float().numpy()
    out[f"{prefix}_relevance_bias"] = ref["relevance_bias"].detach().float().numpy()
    return out


def silu_rule_comparison(stab, exact):
    """Max rel. differences stabilized vs exact SiLU rule: (token, embedding, bias); the
    bias difference is relative to max|f|."""
    return (rel_max_diff(stab["relevance"], exact["relevance"]),
            rel_max_diff(stab["relevance_embedding"], exact["relevance_embedding"]),
            float((stab["relevance_bias"] - exact["relevance_bias"]).abs().max()
                  / exact["target_logit"].abs().max()))


def float64_check(model, ids, target, refs32):
    """Max rel. differences (token, embedding) between the float32 references and the
    same references computed on ``model.double()`` in float64, per SiLU rule."""
    import copy

    model64 = copy.deepcopy(model).double()
    out = {}
    for silu_rule, r32 in refs32.items():
        r64 = mamba_lrp.relevance(model64, ids, "mambalrp", target, silu_rule=silu_rule)
        out[silu_rule] = (rel_max_diff(r32["relevance"].double(), r64["relevance"]),
                          rel_max_diff(r32["relevance_embedding"].double(), r64["relevance_embedding"]),
                          float(conservation(r64).max()))
    return out


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    import onnx  # noqa: F401  (fail early if missing)
    import transformers

    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnx {onnx.__version__}, numpy {np.__version__}")
    log("references: mambalrp_* = stabilized SiLU rule (the default), mambalrp_exact_* = exact "
        "SiLU rule, gi_* = gradient x input; R_bias = conv-bias + stabilized-SiLU-offset relevance")
    all_issues = {}
    for spec in FIXTURES:
        name = spec["name"]
        log(f"== {name}: L={spec['layers']} H={spec['hidden']} D={2 * spec['hidden']} "
            f"N={spec['state']} R={spec['dt_rank']} V={spec['vocab']} tied={spec['tied']} "
            f"conv_bias={spec['conv_bias']} x_proj x{spec['xproj_scale']} B={BATCH} S={seq_len(spec)}"
            + (f" lm_head x{spec['lm_head_scale']}" if spec.get("lm_head_scale") else "")
            + (" small_silu" if spec.get("small_silu") else ""))
        model = build_model(spec)
        ids = make_inputs(spec)
        for site in model.small_silu_sites:
            log(f"  engineered SiLU input: layer {site['layer']} {site['branch']} branch "
                f"[b={site['b']}, c={site['c']}, t={site['t']}] = {site['value']:+.4e} "
                f"(target {site['target']:+.1e}; largest summand {site['summand']:+.3e})")

        with torch.no_grad():
            hf_logits = model(input_ids=ids, use_cache=False).logits.float()
        d = mamba_lrp.check_against_hf(model, ids, atol=spec.get("ort_atol", 1e-5))
        log(f"  ours(rules off) vs HF logits max abs diff: {d:.3e}; logits range "
            f"[{hf_logits.min().item():.3f}, {hf_logits.max().item():.3f}], "
            f"max|logit| {hf_logits.abs().max().item():.3f}")

        target = hf_logits[:, -1, :].argmax(-1)
        assert torch.equal(target, mamba_lrp.default_target(model, ids))
        top2 = hf_logits[:, -1, :].topk(2, dim=-1).values
        full = mamba_lrp.relevance(model, ids, "mambalrp", target)
        exact = mamba_lrp.relevance(model, ids, "mambalrp", target, silu_rule="exact")
        gi = mamba_lrp.relevance(model, ids, "gi", target)
        tl = hf_logits[torch.arange(BATCH), -1, target]
        log(f"  target {target.tolist()}, target_logit {fmt(tl)}; top-1 minus top-2 "
            f"{fmt(top2[:, 0] - top2[:, 1], '.4f')}")
        for label, ref in (("mambalrp (stabilized SiLU)", full), ("mambalrp (exact SiLU)", exact)):
            sum_r = ref["relevance"].sum(-1)
            gap = sum_r - tl
            res = conservation(ref)
            log(f"  {label}: sum(R) {fmt(sum_r)}; rel gap sum(R)-f {fmt(gap.abs() / tl.abs(), '.3e')}; "
                f"R_bias {fmt(ref['relevance_bias'], '.3e')}; residual sum(R)+R_bias-f rel {fmt(res, '.3e')}")
            assert float(res.max()) < 1e-5, "conservation with bias broken"
        if spec["conv_bias"] == "zero":
            gap = (exact["relevance"].sum(-1) - tl).abs() / tl.abs()
            assert float(gap.max()) < 1e-5, "conservation broken"
        d_tok, d_emb, d_bias = silu_rule_comparison(full, exact)
        log(f"  stabilized vs exact SiLU rule: rel max diff token {d_tok:.3e}, embedding {d_emb:.3e}, "
            f"R_bias {d_bias:.3e} (of max|f|)")
        f64 = float64_check(model, ids, target, {"stabilized": full, "exact": exact})
        log("  float32 vs float64 (model.double()) references, rel max diff [token | embedding] "
            "(float64 conservation residual): " +
            ", ".join(f"{k}: {a:.3e} | {b:.3e} ({c:.1e})" for k, (a, b, c) in f64.items()))
        if spec.get("small_silu"):
            ok_a = d_tok >= 1e-3
            ok_b = all(v[0] <= 1e-6 for v in f64.values())
            ok_c = float(torch.maximum(conservation(full), conservation(exact)).max()) <= 1e-6
            log(f"  small_silu checks: (a) stabilized vs exact token diff >= 1e-3: {ok_a}; "
                f"(b) float32 vs float64 token diff <= 1e-6 (both rules): {ok_b}; "
                f"(c) conservation <= 1e-6 (both rules): {ok_c}")
            assert ok_a and ok_b and ok_c, "small_silu fixture requirements not met"
        log(f"  gi sum(R) {fmt(gi['relevance'].sum(-1))} (vs f {fmt(tl, '.3f')})")
        # independent check of the gi reference: autograd through HF's own module
        E = model.backbone.embeddings(ids).detach().clone().requires_grad_(True)
        hf_f = model(inputs_embeds=E, use_cache=False).logits[torch.arange(BATCH), -1, target]
        (hf_g,) = torch.autograd.grad(hf_f.sum(), E)
        hf_gi = (E * hf_g).detach()
        d_gi = rel_max_diff(gi["relevance_embedding"], hf_gi)
        log(f"  gi (ours) vs gradient x input through HF's module: rel max diff {d_gi:.3e}")
        assert d_gi < 1e-5, "gi reference disagrees with HF autograd"
        log(f"  gi vs mambalrp rel max diff {rel_max_diff(gi['relevance'], full['relevance']):.3e}")
        abl = {}
        for r in SINGLE_RULES:
            part = mamba_lrp.relevance(model, ids, sorted(mamba_lrp.ALL_RULES - {r}), target)
            abl[r] = (rel_max_diff(part["relevance"], full["relevance"]),
                      rel_max_diff(part["relevance_embedding"], full["relevance_embedding"]))
        log("  ablation (mambalrp minus rule) rel max diff [token | embedding]: " +
            ", ".join(f"-{r}: {a:.3e} | {b:.3e}" for r, (a, b) in abl.items()))
        if spec["xproj_scale"] > 1:
            log(f"  bigxproj check: -ssm rel diff {abl['ssm'][0]:.3e} > 1e-3: {abl['ssm'][0] > 1e-3}")
            assert abl["ssm"][0] > 1e-3, "missing SSM rule not visible"

        save_npz(
            os.path.join(OUT, f"{name}.ref.npz"),
            input_ids=ids.numpy().astype(np.int64),
            logits=hf_logits.numpy().astype(np.float32),
            target=target.numpy().astype(np.int64),
            target_logit=tl.numpy().astype(np.float32),
            **reference_arrays(full, "mambalrp"),
            gi_relevance=gi["relevance"].numpy().astype(np.float32),
            gi_relevance_embedding=gi["relevance_embedding"].numpy().astype(np.float32),
            **reference_arrays(exact, "mambalrp_exact"),
        )

        ts_path, dy_path = export(model, ids, name, spec.get("dynamo_node_metadata", True))
        atol = spec.get("ort_atol", 1e-5)
        for kind, path in (("ts", ts_path), ("dynamo", dy_path)):
            ol = ort_logits(path, ids)
            diff = float(np.abs(ol - hf_logits.numpy()).max())
            log(f"  onnxruntime {kind}: logits shape {list(ol.shape)}, max abs diff vs HF {diff:.3e} "
                f"(tolerance {atol:.0e})")
            assert diff < atol, f"{path}: onnxruntime logits differ by {diff}"
            if model.small_silu_sites:
                values, worst = check_small_silu_sites_in_ort(path, model, ids)
                log(f"  onnxruntime {kind}: engineered SiLU inputs {[f'{v:+.4e}' for v in values]}; "
                    f"max |onnxruntime - PyTorch| at the sites {worst:.2e}")
                assert worst < 1e-9, "engineered SiLU inputs not reproduced by onnxruntime"
            _, issues = inspect_graph(path, spec, kind)
            all_issues[f"{name}/{kind}"] = issues

    log("== summary of deviations from EXPORTED-GRAPHS.md")
    for k, v in all_issues.items():
        log(f"  {k}: {'none' if not v else '; '.join(v)}")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)
                if f != "REPORT.txt")
    log(f"total fixture bytes (excluding REPORT.txt): {total}")
    with open(os.path.join(OUT, "REPORT.txt"), "w") as fh:
        fh.write("\n".join(REPORT) + "\n")


if __name__ == "__main__":
    main()
