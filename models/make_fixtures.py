"""Regenerate the ONNX + reference fixtures under models/fixtures/.

Regeneration command (from the repository root, after `bash models/setup.sh`):

    models/.venv/bin/python models/make_fixtures.py

For each fixture this builds a random-init Hugging Face ``MambaForCausalLM``
(fixed seeds, parameters perturbed away from HF's structured init), exports it
with both exporters at batch 2, seq 8, static shapes:

* TorchScript: ``torch.onnx.export(..., dynamo=False, opset_version=17)`` -> ``<name>.onnx``
* dynamo:      ``torch.onnx.export(..., dynamo=True, opset_version=18, external_data=False)``
               -> ``<name>_dynamo.onnx`` (the per-node ``pkg.torch.onnx.stack_trace``
               metadata entries are dropped afterwards: they hold absolute source paths,
               are most of the bytes, and make the file depend on the checkout location;
               every other metadata entry is kept)

and writes ``<name>.ref.npz`` with the HF logits and the PyTorch reference
relevances (models/mamba_lrp.py) for rule sets ``mambalrp`` and ``gi``.
It checks the exported graphs in onnxruntime against the HF logits, checks
their structure against shared/EXPORTED-GRAPHS.md, and writes a summary
(op histograms, checks) to ``models/fixtures/REPORT.txt``.

Deterministic: the same command gives the same numbers (single-threaded torch,
fixed seeds).
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
    # name, layers, hidden, state, dt_rank, vocab, tied, conv_bias, xproj_scale, model seed
    dict(name="tiny_convbias", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
         tied=True, conv_bias="random", xproj_scale=1.0, seed=1001),
    dict(name="tiny_zerobias", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
         tied=True, conv_bias="zero", xproj_scale=1.0, seed=1002),
    dict(name="small_untied", layers=3, hidden=64, state=16, dt_rank=4, vocab=256,
         tied=False, conv_bias="zero", xproj_scale=1.0, seed=1003),
    # same weights as tiny_convbias, x_proj scaled 6x
    dict(name="tiny_bigxproj", layers=2, hidden=32, state=4, dt_rank=2, vocab=64,
         tied=True, conv_bias="random", xproj_scale=6.0, seed=1001),
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
    return model


def make_inputs(spec):
    g = torch.Generator().manual_seed(spec["seed"] + 12345)
    return torch.randint(0, spec["vocab"], (BATCH, SEQ), generator=g, dtype=torch.int64)


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


def export(model, ids, name):
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
    drop_stack_traces(dy_path)
    return ts_path, dy_path


def drop_stack_traces(path):
    """Removes the dynamo exporter's per-node stack traces (absolute source paths)."""
    import onnx

    m = onnx.load(path)
    for node in m.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(m, path)


def ort_logits(path, ids):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input_ids": ids.numpy()})[0]


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
    L, S, N, R = spec["layers"], SEQ, spec["state"], spec["dt_rank"]
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


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    import onnx  # noqa: F401  (fail early if missing)
    import transformers

    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnx {onnx.__version__}, numpy {np.__version__}")
    all_issues = {}
    for spec in FIXTURES:
        name = spec["name"]
        log(f"== {name}: L={spec['layers']} H={spec['hidden']} D={2 * spec['hidden']} "
            f"N={spec['state']} R={spec['dt_rank']} V={spec['vocab']} tied={spec['tied']} "
            f"conv_bias={spec['conv_bias']} x_proj x{spec['xproj_scale']}")
        model = build_model(spec)
        ids = make_inputs(spec)

        with torch.no_grad():
            hf_logits = model(input_ids=ids, use_cache=False).logits.float()
        d = mamba_lrp.check_against_hf(model, ids)
        log(f"  ours(rules off) vs HF logits max abs diff: {d:.3e}; logits range "
            f"[{hf_logits.min().item():.3f}, {hf_logits.max().item():.3f}], "
            f"max|logit| {hf_logits.abs().max().item():.3f}")

        target = hf_logits[:, -1, :].argmax(-1)
        assert torch.equal(target, mamba_lrp.default_target(model, ids))
        full = mamba_lrp.relevance(model, ids, "mambalrp", target)
        gi = mamba_lrp.relevance(model, ids, "gi", target)
        tl = hf_logits[torch.arange(BATCH), -1, target]
        sum_r = full["relevance"].sum(-1)
        gap = sum_r - tl
        log(f"  target {target.tolist()}, target_logit {[f'{v:.6f}' for v in tl.tolist()]}")
        log(f"  mambalrp sum(R) {[f'{v:.6f}' for v in sum_r.tolist()]}; gap sum(R)-f "
            f"{[f'{v:.3e}' for v in gap.tolist()]}; rel gap "
            f"{[f'{v:.3e}' for v in (gap.abs() / tl.abs()).tolist()]}")
        rb = full["relevance_bias"]
        res = sum_r + rb - tl
        log(f"  conv-bias relevance R_bias {[f'{v:.6f}' for v in rb.tolist()]}; "
            f"residual sum(R)+R_bias-f rel {[f'{v:.3e}' for v in (res.abs() / tl.abs()).tolist()]}")
        if spec["conv_bias"] == "zero":
            assert float((gap.abs() / tl.abs()).max()) < 1e-5, "conservation broken"
        assert float((res.abs() / tl.abs()).max()) < 1e-5, "conservation with bias broken"
        log(f"  gi sum(R) {[f'{v:.6f}' for v in gi['relevance'].sum(-1).tolist()]} "
            f"(vs f {[f'{v:.3f}' for v in tl.tolist()]})")
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
            mambalrp_relevance=full["relevance"].numpy().astype(np.float32),
            mambalrp_relevance_embedding=full["relevance_embedding"].numpy().astype(np.float32),
            mambalrp_relevance_bias=rb.numpy().astype(np.float32),
            gi_relevance=gi["relevance"].numpy().astype(np.float32),
            gi_relevance_embedding=gi["relevance_embedding"].numpy().astype(np.float32),
        )

        ts_path, dy_path = export(model, ids, name)
        for kind, path in (("ts", ts_path), ("dynamo", dy_path)):
            ol = ort_logits(path, ids)
            diff = float(np.abs(ol - hf_logits.numpy()).max())
            log(f"  onnxruntime {kind}: logits shape {list(ol.shape)}, max abs diff vs HF {diff:.3e}")
            assert diff < 1e-5, f"{path}: onnxruntime logits differ by {diff}"
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
