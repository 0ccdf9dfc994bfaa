"""Regenerate the tiny Vision Mamba (Vim) fixtures under models/fixtures/.

Regeneration command (from the repository root; needs models/.venv, see models/setup.sh):

    OMP_NUM_THREADS=1 nice -n 10 models/.venv/bin/python models/make_vim_fixtures.py

It builds models/vim.py's ``TinyVim`` (defaults: 32x32x3 images, patch 8 -> 16 patches + a
middle cls token = 17 tokens, d_model 48, d_inner 96, d_state 8, d_conv 4, dt_rank 3,
2 bidirectional-v2 blocks, 10 classes, eps 1e-5, seed 2024, weights perturbed away from the
structured init) in three variants:

* ``vim_tiny``: all biases and additive constants random;
* ``vim_zerobias``: the same weights with the patch conv bias, every conv1d bias (both
  directions), every dt_proj bias, the head bias and pos_embed zeroed. The cls token is
  kept: a zero cls token makes the model constant (logits = 0; see
  ``TinyVim.zero_biases``). It is an input token, its relevance is
  ``relevance_tokens[:, 8]``, so here sum(pixels) = sum(patches) = sum(tokens) - R_cls and
  sum(tokens) = target_logit (up to the stabilized SiLU rule's ~1e-6 offsets).
  What the exporters emitted for the zero biases (printed by the checks):
  TorchScript deduplicates equal initializers: the 8 zero [96] vectors (conv1d and dt_proj
  biases, both blocks, both directions) become one initializer,
  ``layers.0.mixer.fwd.conv1d.bias``, plus 7 Identity nodes that rename it (the Conv and the
  dt_proj Add read the Identity outputs); the zero patch conv / head biases and pos_embed stay
  separate initializers, the Conv/Gemm keep 3 inputs. dynamo has no Identity nodes: it drops
  the zero biases from the 5 Conv and the Gemm (2 inputs each) and the 4 dt_proj bias Adds
  read one shared initializer ``layers.0.mixer.fwd.dt_proj.bias``; pos_embed's zero Add stays.
* ``vim_dynbatch.onnx`` (TorchScript only, no npz of its own): vim_tiny exported with a
  symbolic batch axis (``dynamic_axes``), checked in ONNX Runtime at batch 1 and 3; tests
  compare it with vim_tiny.ref.npz sample by sample;
* ``vim_official``: the vim_tiny weights, config and images with ``layout="official"``
  (vim.py): the mixer written as the official MambaLRP code writes Vision Mamba (einsums,
  ``(b l) d`` reshapes, ``b l d`` scan layout, backward flip on axis 1), not as the HF slow
  path. Same function as vim_tiny (checked: logits and MambaLRP relevances equal in
  float32, gradient x input within ~6e-7 relative), so its .ref.npz equals vim_tiny's up to
  rounding; it is there to test that the compiler finds the Mamba structure in an export that
  does not look like the HF slow path. Its exports: every direction has 20 ``Einsum`` nodes
  (both exporters keep them): ``bld,dn->bldn`` (deltaA, before Exp), ``bld,bln->bldn``
  (deltaB), ``bldn,bld->bldn`` (deltaB_u) and 17 ``bdn,bn->bd`` (C contraction per step,
  instead of HF's MatMul + Unsqueeze/Gather); x_proj is followed by a Reshape to
  ``[B*L, 19]``, dt / B / C Reshaped back to ``[B, L, .]``; the per-step selects are
  ``Gather(axis=1, scalar)`` on deltaA (Exp), deltaB_u (Einsum) and C (TorchScript: on a
  Cast, dynamo: on the Reshape); the backward branch's flip is on axis 1 of the gated
  ``[B, L, d_inner]`` Mul, and out_proj is a MatMul on it (no Transpose). TorchScript 880
  nodes (vim_tiny 1154), dynamo 634 (768); TorchScript folds A_log.float() ([96, 8]) and D
  ([96]) into initializers, dynamo folds A = -exp(A_log) (``neg*`` [96, 8]).

Other export facts (vim_tiny and vim_zerobias; vim_official shares those of the flip of xz,
the cls insert and the cls select): ``torch.flip`` is ``Slice(starts=[-1], ends=[INT64_MIN]
(TorchScript: INT64_MIN + 1), axes=[-1], steps=[-1])``, on the in_proj Transpose output (xz)
and on the backward branch's gated output (Mul); the cls insert is ``Concat(axis=1)`` of two
Slices and the cls token expanded to [B,1,d] (TorchScript: ``Expand(cls_token, shape from a
Shape/Gather/Concat/ConstantOfShape/Equal/Where chain)``; dynamo: a constant-folded
initializer named ``expand`` [2,1,48], no ``cls_token`` initializer); the head's cls select is
``Gather(axis=1, index=8, scalar)`` on norm_f's weight Mul, feeding ``Gemm(transB=1)``.
TorchScript folds ``A_log.float()`` and ``D[None,:,None]`` into initializers (``onnx::Exp_*``
[96,8] = A_log, ``onnx::Mul_*`` [1,96,1] = D); dynamo folds A entirely
(``unsqueeze_*`` [1,96,1,8] = -exp(A_log)[None,:,None,:], [1,96,1] = D) and the initial
states (``zeros*`` [2,96,8]).

and writes for each ``<name>``, in eval mode, unmodified (no rules; the compiler adds them),
static shapes, batch 2, input ``pixel_values`` [2,3,32,32] float32, output ``logits`` [2,10]:

* ``<name>.onnx``: TorchScript exporter, ``torch.onnx.export(..., dynamo=False, opset_version=17)``;
* ``<name>_dynamo.onnx``: ``torch.onnx.export(..., dynamo=True, opset_version=18,
  external_data=False)``, written without any node metadata (make_fixtures.drop_stack_traces
  with all_node_metadata=True, as for mid_biglogits_dynamo.onnx: with the namespace /
  class_hierarchy / fx_node / name_scopes entries the files would be ~720 KB instead of
  ~325 KB); the graph's value_info is kept;
* ``<name>.ref.npz`` (make_fixtures.save_npz: byte-deterministic), keys:

  - ``image`` [2,3,32,32] f32: the fixed-seed input (smooth noise, roughly N(0,1));
  - ``logits`` [2,10]: the plain model; ``target`` [2] int64: their argmax;
    ``target_logit`` [2]: logits[b, target[b]] under the rules (= plain, up to rounding);
  - ``relevance_pixels`` [2,3,32,32]: image * grad with the MambaLRP rules in every block
    (stabilized SiLU rule, the official form; selection stop-gradient; gate half rule;
    RMSNorm denominator detached, every norm) and LRP-gamma (0.25, the official
    ModifiedConv form) on the patch embedding; ``relevance_pixels_zero``: the same with the
    plain patch conv ("zero" patch rule: plain gradient);
  - ``relevance_patches`` [2,16]: sum over d of patch tokens (after flatten/transpose,
    before the cls insert) * grad; ``relevance_tokens`` [2,17]: sum over d of the tokens
    after ``+ pos_embed`` (cls at index 8) * grad (= the official
    ``vision_relevance_propagation``). Both are the same for either patch rule (the rule
    only changes the backward below the patch tokens);
  - ``relevance_bias`` [2] = target_logit - relevance_pixels.sum((1,2,3)) (gamma rule),
    ``relevance_bias_zero`` likewise for the plain patch conv: the relevance absorbed by all
    biases, pos_embed, the cls token and the stabilized SiLU offsets;
  - ``relevance_tokens_exact``, ``relevance_pixels_exact``: as above with the exact SiLU
    rule ``x * sg(sigmoid(x))`` (gamma patch rule);
  - ``relevance_tokens_gi`` [2,17]: plain gradient x input at the tokens (no rules);
  - ``*_png``: the same for models/fixtures/vim_sample.png (32x32 RGB, a bright square on
    a dark background), preprocessed ``x = (pixel / 255 - 0.5) / 0.5`` per channel, batch 1,
    PyTorch only (the ONNX graphs are batch 2: tile the image twice; checked below):
    ``image_png`` [1,3,32,32], ``logits_png`` [1,10], ``target_png`` [1],
    ``relevance_pixels_png``, ``relevance_patches_png``, ``relevance_tokens_png``
    (gamma patch rule, stabilized SiLU rule).

  vim_official.ref.npz has the same keys, computed with the official layout.

Checks printed: (vim_official) logits and relevances vs the HF layout's, conservation, float32 vs float64 (``model.double()``) references,
onnxruntime vs PyTorch logits (atol 1e-5), MambaLRP vs gradient x input, op histograms and
the structure of the exports (flip, cls insert, cls select, Identity nodes), file sizes.
Deterministic: single-threaded torch, fixed seeds, save_npz; the PNG is written by hand
(zlib, fixed level).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import os
import struct
import sys
import warnings
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import vim  # noqa: E402
from make_fixtures import _const_value as _const, drop_stack_traces, save_npz  # noqa: E402

OUT = os.path.join(HERE, "fixtures")
BATCH = 2
IMAGE_SEED = 83  # chosen so that the two samples have different targets (both variants)
PNG_NAME = "vim_sample.png"
# the dynamo graphs' node metadata (namespace, class_hierarchy, fx_node, name_scopes) would be
# ~380 KB of the ~720 KB files; dropped entirely, as for mid_biglogits_dynamo.onnx
DYNAMO_NODE_METADATA = False


def log(*a):
    print(" ".join(str(x) for x in a), flush=True)


def fmt(t, spec=".6f"):
    return "[" + ", ".join(format(float(v), spec) for v in torch.as_tensor(t).flatten()) + "]"


# ----------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------

def make_images(cfg: vim.VimConfig) -> torch.Tensor:
    """Fixed-seed, normalised-looking images: a smooth field (4x4 noise, bilinear) plus
    pixel noise, scaled to roughly N(0, 1) per channel; about half the values negative."""
    g = torch.Generator().manual_seed(IMAGE_SEED)
    s = cfg.img_size
    coarse = torch.randn(BATCH, cfg.in_chans, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    x = smooth + 0.5 * torch.randn(BATCH, cfg.in_chans, s, s, generator=g)
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    return x.contiguous()


def sample_pixels(size: int = 32) -> np.ndarray:
    """[H, W, 3] uint8: a dark blue-grey background, a bright yellow square (rows 6..17,
    cols 14..25, not aligned with the 8x8 patches) and a dim red bar along the bottom."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[:, :] = (20, 24, 40)
    img[6:18, 14:26] = (250, 220, 40)
    img[26:29, 2:30] = (120, 30, 30)
    return img


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(path: str, rgb: np.ndarray) -> None:
    """8-bit RGB PNG, filter type 0 on every row, zlib level 9 (byte-deterministic)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b""))


def read_png(path: str) -> np.ndarray:
    """Reads back what write_png writes (8-bit RGB, filter 0 only)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", None, None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert (depth, ctype) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    rows = [raw[r * (3 * w + 1):(r + 1) * (3 * w + 1)] for r in range(h)]
    assert all(row[0] == 0 for row in rows)
    return np.frombuffer(b"".join(row[1:] for row in rows), dtype=np.uint8).reshape(h, w, 3)


def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """[H,W,3] uint8 -> [1,3,H,W] float32, ``(pixel / 255 - 0.5) / 0.5``."""
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
    return ((x / 255.0 - 0.5) / 0.5).contiguous()


# ----------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------

def rel_max_diff(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def references(model: vim.TinyVim, image: torch.Tensor) -> dict:
    logits = vim.plain_logits(model, image)
    target = logits.argmax(-1)
    gamma = vim.explain(model, image, target, lrp=True, patch_rule="gamma")
    zero = vim.explain(model, image, target, lrp=True, patch_rule="zero")
    exact = vim.explain(model, image, target, lrp=True, silu_rule="exact", patch_rule="gamma")
    gi = vim.explain(model, image, target, lrp=False, patch_rule="plain")
    return dict(logits=logits, target=target, gamma=gamma, zero=zero, exact=exact, gi=gi)


def npz_arrays(image, refs, png_image, png_refs) -> dict:
    g, z = refs["gamma"], refs["zero"]
    f = g["target_logit"]
    arrays = {
        "image": image,
        "logits": refs["logits"],
        "target": refs["target"],
        "target_logit": f,
        "relevance_pixels": g["relevance_pixels"],
        "relevance_pixels_zero": z["relevance_pixels"],
        "relevance_patches": g["relevance_patches"],
        "relevance_tokens": g["relevance_tokens"],
        "relevance_bias": f - g["relevance_pixels"].sum((1, 2, 3)),
        "relevance_bias_zero": z["target_logit"] - z["relevance_pixels"].sum((1, 2, 3)),
        "relevance_tokens_exact": refs["exact"]["relevance_tokens"],
        "relevance_pixels_exact": refs["exact"]["relevance_pixels"],
        "relevance_tokens_gi": refs["gi"]["relevance_tokens"],
        "image_png": png_image,
        "logits_png": png_refs["logits"],
        "target_png": png_refs["target"],
        "relevance_pixels_png": png_refs["gamma"]["relevance_pixels"],
        "relevance_patches_png": png_refs["gamma"]["relevance_patches"],
        "relevance_tokens_png": png_refs["gamma"]["relevance_tokens"],
    }
    out = {}
    for k, v in arrays.items():
        v = v.detach().numpy()
        out[k] = v.astype(np.int64) if k.startswith("target") and "logit" not in k else v.astype(np.float32)
    return out


def check_conservation(model, refs, zero_bias):
    """sum(tokens) + R_leaves + head_bias[target] = f, where R_leaves is the relevance of the
    conv1d biases and the stabilized SiLU offsets (vim.explain's relevance_leaves)."""
    tp = model.token_position
    head_bias = model.head.bias.detach()[refs["target"]]
    for rule in ("gamma", "zero", "exact"):
        r = refs[rule]
        f = r["target_logit"]
        s_px = r["relevance_pixels"].sum((1, 2, 3))
        s_pa = r["relevance_patches"].sum(-1)
        s_to = r["relevance_tokens"].sum(-1)
        r_cls = r["relevance_tokens"][:, tp]
        leaves = r["relevance_leaves"]
        log(f"  [{rule}] f {fmt(f)} sum(px) {fmt(s_px)} sum(patches) {fmt(s_pa)} "
            f"sum(tokens) {fmt(s_to)} R_cls {fmt(r_cls)} R_convbias+silu_offsets {fmt(leaves, '.3e')}")
        gap_tok = ((s_to + leaves + head_bias - f).abs() / f.abs()).max().item()
        log(f"      rel |sum(tokens) + R_leaves + head_bias[target] - f| / |f|: {gap_tok:.2e}")
        if zero_bias:
            g1 = ((s_px - s_pa).abs() / f.abs()).max().item()
            g2 = ((s_pa + r_cls - s_to).abs() / f.abs()).max().item()
            g3 = ((s_to - f).abs() / f.abs()).max().item()
            g4 = ((s_px + r_cls - f).abs() / f.abs()).max().item()
            log(f"      zero-bias conservation, rel to |f|: |sum(px)-sum(patches)| {g1:.2e}, "
                f"|sum(patches)+R_cls-sum(tokens)| {g2:.2e}, |sum(tokens)-f| {g3:.2e} "
                f"(= SiLU offsets), |sum(px)+R_cls-f| {g4:.2e}")
            assert max(g1, g2) < 1e-6 and max(g3, g4) < 1e-5, "zero-bias conservation broken"
        assert gap_tok < 1e-5, "conservation (with leaves) broken"


def check_same_function(refs, hf_refs):
    """vim_official (layout "official") vs vim_tiny (layout "hf"): same weights, same
    function; logits and relevances equal up to float32 rounding."""
    d = float((refs["logits"] - hf_refs["logits"]).abs().max())
    log(f"  official vs hf layout (same weights): logits max abs diff {d:.2e}; targets equal: "
        f"{bool(torch.equal(refs['target'], hf_refs['target']))}")
    assert d < 1e-5 and torch.equal(refs["target"], hf_refs["target"]), "layouts differ"
    for rule in ("gamma", "zero", "exact", "gi"):
        diffs = {k: rel_max_diff(refs[rule][k], hf_refs[rule][k])
                 for k in ("relevance_pixels", "relevance_patches", "relevance_tokens", "target_logit")}
        log(f"    [{rule}] rel max diff: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        assert max(diffs.values()) < 1e-5, "layouts differ"


def float64_check(model, image, refs):
    m64 = vim.TinyVim(model.cfg)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    x64 = image.double()
    target = refs["target"]
    l64 = vim.plain_logits(m64, x64)
    log(f"  float32 vs float64 logits rel max diff {rel_max_diff(refs['logits'], l64):.2e}; "
        f"float64 argmax equal: {bool(torch.equal(l64.argmax(-1), target))}")
    for rule, kw in (("gamma", dict(patch_rule="gamma")), ("zero", dict(patch_rule="zero")),
                     ("exact", dict(patch_rule="gamma", silu_rule="exact")),
                     ("gi", dict(lrp=False, patch_rule="plain"))):
        r64 = vim.explain(m64, x64, target, **kw)
        r32 = refs[rule]
        log(f"  float32 vs float64 [{rule}] rel max diff: pixels "
            f"{rel_max_diff(r32['relevance_pixels'], r64['relevance_pixels']):.2e}, patches "
            f"{rel_max_diff(r32['relevance_patches'], r64['relevance_patches']):.2e}, tokens "
            f"{rel_max_diff(r32['relevance_tokens'], r64['relevance_tokens']):.2e}, target_logit "
            f"{rel_max_diff(r32['target_logit'], r64['target_logit']):.2e}")


# ----------------------------------------------------------------------------------
# export and graph inspection
# ----------------------------------------------------------------------------------

def export(model, image, name):
    ts_path = os.path.join(OUT, f"{name}.onnx")
    dy_path = os.path.join(OUT, f"{name}_dynamo.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (image,), ts_path, dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["logits"])
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (image,), dy_path, dynamo=True, opset_version=18,
                              external_data=False, input_names=["pixel_values"],
                              output_names=["logits"])
    drop_stack_traces(dy_path, all_node_metadata=not DYNAMO_NODE_METADATA)
    return ts_path, dy_path


def export_dynamic_batch(model, image):
    """vim_tiny with a symbolic batch axis (TorchScript dynamic_axes): the export computes
    the class token's expand and the reshapes from the runtime batch, so a compiled model can
    take any batch (its references are vim_tiny.ref.npz's, sample by sample)."""
    path = os.path.join(OUT, "vim_dynbatch.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (image,), path, dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
    return path


def ort_run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"pixel_values": x})[0]


def _attr(node, key, default=None):
    import onnx.helper as oh

    for a in node.attribute:
        if a.name == key:
            return oh.get_attribute_value(a)
    return default


def inspect(path, kind):
    import onnx

    m = onnx.load(path)
    g = m.graph
    producers = {o: n for n in g.node for o in n.output}
    hist = collections.Counter(n.op_type for n in g.node)
    log(f"  [{kind}] {os.path.basename(path)}: {os.path.getsize(path)} B, {len(g.node)} nodes, "
        f"{len(g.initializer)} initializers, opset "
        f"{ {o.domain or '': o.version for o in m.opset_import} }, ir {m.ir_version}")
    log("    ops: " + ", ".join(f"{k} {v}" for k, v in hist.most_common()))
    log(f"    inputs {[(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in g.input]}"
        f" outputs {[(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in g.output]}")

    # torch.flip: Slice with a negative step (or anything else that reverses)
    rev = []
    for n in g.node:
        if n.op_type == "Slice" and len(n.input) >= 5:
            steps = _const(m, n.input[4], producers)
            if steps is not None and (np.asarray(steps) < 0).any():
                src = producers[n.input[0]].op_type if n.input[0] in producers else n.input[0]
                rev.append(str((src, *(_const(m, n.input[k], producers).tolist() for k in (1, 2, 3)),
                                steps.tolist())))
    log(f"    flip as Slice(step<0): {len(rev)}; (input producer, starts, ends, axes, steps): "
        + "; ".join(f"{r} x{c}" for r, c in collections.Counter(rev).items()))
    others = [n.op_type for n in g.node if n.op_type in ("ReverseSequence", "Flip")]
    if others:
        log(f"    other reversing ops: {collections.Counter(others)}")

    # cls insert: Concat of 3 inputs on axis 1; where the middle input comes from
    for n in g.node:
        if n.op_type == "Concat" and len(n.input) == 3:
            srcs = []
            for i in n.input:
                p = producers.get(i)
                if p is None:
                    srcs.append(f"{i} (graph input/initializer)")
                else:
                    ins = [(x if x not in producers else producers[x].op_type) for x in p.input]
                    srcs.append(f"{p.op_type}({', '.join(map(str, ins))})")
            log(f"    cls insert: Concat(axis={_attr(n, 'axis')}) of " + " | ".join(srcs))
    # cls select: the Gather feeding the head's Gemm; the scan's Gathers summarised
    consumers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    pattern = collections.Counter()
    for n in g.node:
        if n.op_type != "Gather":
            continue
        idx = _const(m, n.input[1], producers)
        src = producers[n.input[0]].op_type if n.input[0] in producers else n.input[0]
        to = [c.op_type for c in consumers[n.output[0]]]
        if "Gemm" in to:
            log(f"    cls select (head input): Gather(axis={_attr(n, 'axis', 0)}, index="
                f"{None if idx is None else idx.tolist()}, scalar={idx is not None and idx.ndim == 0}) "
                f"of {src} -> {to}")
        else:
            kind = "const scalar" if idx is not None and idx.ndim == 0 else \
                ("const" if idx is not None else "computed")
            pattern[(f"axis={_attr(n, 'axis', 0)}", kind, f"from {src}")] += 1
    log("    other Gathers: " + "; ".join(f"{' '.join(k)}: {v}" for k, v in sorted(pattern.items())))
    for n in g.node:
        if n.op_type == "Expand":
            shp = _const(m, n.input[1], producers)
            log(f"    Expand({n.input[0]}, shape {shp.tolist() if shp is not None else 'computed by ' + producers[n.input[1]].op_type})")
    inits = {i.name for i in g.initializer}
    uses = collections.Counter(i for n in g.node for i in n.input if i in inits)
    shared = {k: c for k, c in uses.items() if c > 1 and int(np.prod(
        [d for d in next(i for i in g.initializer if i.name == k).dims] or [1])) > 1}
    if shared:
        log(f"    initializers used by several nodes (non-scalar): {shared}")
    short = [f"{n.op_type}({len(n.input)} inputs)" for n in g.node
             if n.op_type in ("Conv", "Gemm") and len(n.input) == 2]
    if short:
        log(f"    bias-less Conv/Gemm (zero bias dropped by the exporter): {short}")
    folded = [(i.name, list(i.dims)) for i in g.initializer if not i.name.split(".")[0] in
              ("patch_embed", "layers", "head", "norm_f", "cls_token", "pos_embed")
              and not i.name.startswith("onnx::MatMul") and not i.name.startswith("val_")]
    log(f"    other (constant-folded) initializers: {folded}")
    ids = [(n.input[0], n.output[0]) for n in g.node if n.op_type == "Identity"]
    log(f"    Identity nodes: {len(ids)}" + "".join(f"\n      {a} -> {b}" for a, b in ids))
    return hist


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    import onnx
    import onnxruntime

    log(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"numpy {np.__version__}")
    cfg = vim.VimConfig()
    log(f"config: {cfg}; d_inner {cfg.d_inner}, dt_rank {cfg.rank}, patches {cfg.n_patches}, "
        f"token_position {cfg.token_position}")

    png_path = os.path.join(OUT, PNG_NAME)
    write_png(png_path, sample_pixels(cfg.img_size))
    rgb = read_png(png_path)
    assert np.array_equal(rgb, sample_pixels(cfg.img_size))
    png_image = preprocess(rgb)
    image = make_images(cfg)
    log(f"images: mean {image.mean().item():.3f}, std {image.std().item():.3f}, "
        f"fraction < 0 {(image < 0).float().mean().item():.3f}; png {png_path} "
        f"({os.path.getsize(png_path)} B), preprocessed range [{png_image.min().item():.3f}, "
        f"{png_image.max().item():.3f}]")

    hf_refs = {}
    for name, zero_bias, layout in (("vim_tiny", False, "hf"), ("vim_zerobias", True, "hf"),
                                    ("vim_official", False, "official")):
        model = vim.TinyVim(dataclasses.replace(cfg, layout=layout))
        if zero_bias:
            model.zero_biases()
        log(f"== {name} (layout {layout!r})")
        refs = references(model, image)
        png_refs = references(model, png_image)
        if layout == "hf" and not zero_bias:
            hf_refs = refs
        if layout != "hf":
            check_same_function(refs, hf_refs)
        logits = refs["logits"]
        top2 = logits.topk(2, -1).values
        log(f"  logits {fmt(logits.flatten(), '.4f')}")
        log(f"  target {refs['target'].tolist()}, target_logit {fmt(refs['gamma']['target_logit'])}, "
            f"top1 - top2 {fmt(top2[:, 0] - top2[:, 1], '.4f')}; png: target "
            f"{png_refs['target'].tolist()}, logits {fmt(png_refs['logits'].flatten(), '.4f')}")
        check_conservation(model, refs, zero_bias)
        log("  png (gamma): f " + fmt(png_refs["gamma"]["target_logit"]) + ", sum(px) "
            + fmt(png_refs["gamma"]["relevance_pixels"].sum()) + ", tokens "
            + fmt(png_refs["gamma"]["relevance_tokens"].flatten(), ".3f"))
        float64_check(model, image, refs)

        r_mlrp, r_gi = refs["gamma"]["relevance_tokens"], refs["gi"]["relevance_tokens"]
        cos = torch.nn.functional.cosine_similarity(r_mlrp, r_gi, dim=-1)
        log(f"  rules matter: tokens MambaLRP vs gradient x input rel max diff "
            f"{rel_max_diff(r_gi, r_mlrp):.3f} (of max|R_mambalrp|), cosine {fmt(cos, '.3f')}; "
            f"sum(R_gi tokens) {fmt(r_gi.sum(-1))}")
        log(f"  stabilized vs exact SiLU rule: tokens rel max diff "
            f"{rel_max_diff(refs['exact']['relevance_tokens'], r_mlrp):.2e}, pixels "
            f"{rel_max_diff(refs['exact']['relevance_pixels'], refs['gamma']['relevance_pixels']):.2e}")
        log(f"  gamma vs zero patch rule: pixels rel max diff "
            f"{rel_max_diff(refs['zero']['relevance_pixels'], refs['gamma']['relevance_pixels']):.3f}")

        arrays = npz_arrays(image, refs, png_image, png_refs)
        npz_path = os.path.join(OUT, f"{name}.ref.npz")
        save_npz(npz_path, **arrays)

        ts_path, dy_path = export(model, image, name)
        if name == "vim_tiny":
            dyn_path = export_dynamic_batch(model, image)
            for rows in ([1], [1, 0, 1]):
                d = float(np.abs(ort_run(dyn_path, image[rows].numpy()) - logits[rows].numpy()).max())
                log(f"  {os.path.basename(dyn_path)} at batch {len(rows)}: ORT vs PyTorch logits {d:.2e}")
                assert d < 1e-5, "ORT logits differ"
            inspect(dyn_path, "ts")
        for path, kind in ((ts_path, "ts"), (dy_path, "dynamo")):
            ort = ort_run(path, image.numpy())
            d = float(np.abs(ort - logits.numpy()).max())
            d_png = float(np.abs(ort_run(path, png_image.repeat(2, 1, 1, 1).numpy())[0]
                                 - png_refs["logits"][0].numpy()).max())
            log(f"  onnxruntime [{kind}] vs PyTorch logits max abs diff {d:.2e}; png tiled x2: {d_png:.2e}")
            assert d < 1e-5 and d_png < 1e-5, "ORT logits differ"
            inspect(path, kind)
        log(f"  {os.path.basename(npz_path)}: {os.path.getsize(npz_path)} B, keys "
            + ", ".join(f"{k}{list(v.shape)}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
