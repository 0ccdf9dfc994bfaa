"""Train a small Mamba on a synthetic "key word" task; write the fixture models/fixtures/keys/.

Regeneration command (from the repository root; models/.venv = requirements.txt: torch 2.15,
transformers 4.40.1, tokenizers 0.19.1, onnx, onnxruntime; CPU, single-threaded, ~1-3 min):

    nice -n 10 models/.venv/bin/python models/train_keys_model.py

Deterministic: fixed seeds, ``torch.set_num_threads(1)``, byte-deterministic ``.npz`` files
(``save_npz`` from models/make_fixtures.py); the same command gives the same files.

Task
----
Vocabulary (``VOCAB`` below, ids in that order, V = 51): ``[PAD]`` = 0, ``[UNK]`` = 1, the
separator ``answer`` = 2, four label words (``fruit colour animal tool``), four classes of
four key words each (fruit: ``apple pear plum cherry``; colour: ``red blue green yellow``;
animal: ``cat dog horse mouse``; tool: ``hammer saw drill wrench``) and 28 distractor words.

A sequence has S = 32 tokens: 31 "body" tokens, then ``answer`` at position 31. The body is
distractors (each slot, independently, a uniform distractor word, or ``[UNK]`` with
probability 0.05) with K key words of ONE class (K = 1 or 2, equally likely; the key words
uniform within the class, repeats allowed) at K distinct uniform positions in 0..30. The
label is the class's label word; the model is trained with cross-entropy on the logits of
the LAST position only (next-token prediction after ``answer``). ``[UNK]`` appears among the
distractors during training so that it is a seen, neutral token: it is the flip token of
the faithfulness test below. ``[PAD]`` never appears in any input.

Model: HF ``MambaForCausalLM`` (transformers 4.40.1), random init (seed 0), L = 2 layers,
d_model = 32, d_state = 8, expand 2 (d_inner = 64), conv kernel 4, dt_rank 2, conv bias on,
no linear biases, tied embeddings/LM head. Adam, lr 3e-3, batch 64, fresh random batches
(torch.Generator seed 1), ``STEPS`` steps. Accuracy on a held-out set of 2048 sequences
(generator seed 2) and on the 64-sequence evaluation set (generator seed 3).

Files (models/fixtures/keys/)
-----------------------------
* ``keys_model.onnx``: TorchScript exporter, opset 17, traced at batch 2, seq 32, with
  ``dynamic_axes`` batch and seq on ``input_ids`` and ``logits`` (as ``dynboth`` in
  models/make_variant_fixtures.py); the exporter unrolls the time loop at 32, so the graph
  computes correctly at S = 32 only (any batch).
* ``keys_model_static.onnx``: TorchScript, opset 17, static [1, 32].
* ``tokenizer.json``: Hugging Face ``tokenizers`` (0.19.1) WordLevel model over ``VOCAB``
  (ids as above), ``Whitespace`` pre-tokenizer, ``[UNK]`` as unk token, ``[PAD]``/``[UNK]``
  special tokens. ``encode(line).ids`` of a line of eval.txt gives that row of input_ids.
* ``eval.npz``: ``input_ids`` [64,32] int64; ``label`` [64] int64 (token id of the label
  word); ``key_mask`` [64,32] bool (True at the key words); ``key_positions`` [64,2] int64
  (ascending, -1 padded when K = 1); ``num_keys`` [64] int64; and, for the metric's
  reimplementation: ``mambalrp_relevance``, ``gi_relevance`` [64,32] float32,
  ``mambalrp_relevance_bias`` [64], ``target`` [64] int64, ``target_logit`` [64] f32,
  ``random_order`` [64,32] int64 (the random baseline's MoRF order), and the flip curves
  ``curve_{mambalrp,gi,random}_{morf,lerf}`` [64,33] float32 (see below).
* ``eval.txt``: the 64 input texts, one per line (tokens joined by single spaces).
* ``keys_model.ref.npz``: references for the first 8 eval sequences, the keys of
  models/make_fixtures.py (``input_ids`` [8,32], ``logits`` [8,32,V] (HF), ``target``,
  ``target_logit``, ``mambalrp_relevance``, ``mambalrp_relevance_embedding``,
  ``mambalrp_relevance_bias``, ``gi_relevance``, ``gi_relevance_embedding``,
  ``mambalrp_exact_relevance``, ``mambalrp_exact_relevance_embedding``,
  ``mambalrp_exact_relevance_bias``), computed with models/mamba_lrp.py.
* ``REPORT.txt``: config, accuracy, the metrics below.

Metrics (computed on the 64 eval sequences, float32, HF model forward)
----------------------------------------------------------------------
* Explained logit ``f(x)``: logit of the target token at the last position, target = argmax
  of the unflipped input's last-position logits (= the label when the model is right).
* Token relevance ``R[t]`` (t = 0..31): models/mamba_lrp.py ``relevance(...)["relevance"]``
  (sum over the embedding dimension), signed; ``mambalrp`` = all four rules (stabilized
  SiLU rule), ``gi`` = no rule (gradient x input).
* Orders: MoRF = positions sorted by R descending, LeRF = by R ascending; ties (none in
  practice) broken by the lower position first (a stable sort of ``-R`` resp. ``R``).
  Random: one permutation per input, ``numpy.random.default_rng(0).permutation(32)`` drawn
  for inputs 0..63 in order; its MoRF order is the permutation, its LeRF order the
  permutation reversed.
* Flipping: ``x^(0) = x``; ``x^(k)`` = x with the first k positions of the order replaced by
  ``[UNK]`` (id 1), k = 0..32 (all 32 positions, including the final ``answer``, are flipped
  at k = 32). Curve ``c[k] = f(x^(k))`` (same target token throughout).
* Area ``A = mean_{k=0..32} c[k]`` (plain mean over the 33 points, raw logits, no
  normalisation). ``ΔA^F = A_LeRF - A_MoRF`` per input, averaged over the 64 inputs.
* Key rank: rank of a key position in the MoRF order (1 = most relevant, 32 = least);
  mean over all key instances of all 64 inputs (K = 1 or 2 per input). Random: the
  key's (1-based) place in the random permutation.
* Last position first: fraction of inputs whose MoRF order starts with position 31.
* Bias share: ``R_bias / f`` per input (mambalrp, stabilized rule: conv biases + SiLU
  offsets), mean over inputs; also ``mean R_bias / mean f``.

The stored curves are recomputed from keys_model.onnx in onnxruntime (checked to 1e-3; the
report gives the max difference), so a Rust reimplementation can compare its curves,
areas and ranks with ``eval.npz`` directly. The random baseline has a large spread
(one permutation per input); REPORT.txt also lists its ΔA^F for 4 more draws
(``default_rng(1)``), not stored.
"""

from __future__ import annotations

import io
import os
import sys
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mamba_lrp  # noqa: E402
from make_fixtures import save_npz  # noqa: E402

OUT = os.path.join(HERE, "fixtures", "keys")

SPECIAL = ["[PAD]", "[UNK]"]
SEP = "answer"
CLASSES = {
    "fruit": ["apple", "pear", "plum", "cherry"],
    "colour": ["red", "blue", "green", "yellow"],
    "animal": ["cat", "dog", "horse", "mouse"],
    "tool": ["hammer", "saw", "drill", "wrench"],
}
LABELS = list(CLASSES)
DISTRACTORS = ("the a of and is was on in to it very big small old new house road day night "
               "man woman walk run sit see went today there").split()
VOCAB = SPECIAL + [SEP] + LABELS + [w for c in LABELS for w in CLASSES[c]] + DISTRACTORS
ID = {w: i for i, w in enumerate(VOCAB)}
PAD, UNK = ID["[PAD]"], ID["[UNK]"]
V = len(VOCAB)
S = 32
UNK_RATE = 0.05
STEPS = int(os.environ.get("KEYS_STEPS", "1500"))  # override only for quick smoke tests
BATCH = 64
N_EVAL = 64
N_REF = 8

LOG: list[str] = []


def log(msg=""):
    print(msg, flush=True)
    LOG.append(msg)


def make_batch(n: int, g: torch.Generator):
    """input_ids [n,S], label [n] (label word ids), key_mask [n,S] bool, num_keys [n]."""
    dis = torch.tensor([ID[w] for w in DISTRACTORS])
    ids = dis[torch.randint(0, len(dis), (n, S), generator=g)]
    unk = torch.rand((n, S), generator=g) < UNK_RATE
    ids[unk] = UNK
    cls = torch.randint(0, len(LABELS), (n,), generator=g)
    nk = torch.randint(1, 3, (n,), generator=g)
    key_mask = torch.zeros((n, S), dtype=torch.bool)
    for b in range(n):
        pos = torch.randperm(S - 1, generator=g)[: int(nk[b])]
        words = CLASSES[LABELS[int(cls[b])]]
        which = torch.randint(0, len(words), (int(nk[b]),), generator=g)
        for p, w in zip(pos.tolist(), which.tolist()):
            ids[b, p] = ID[words[w]]
            key_mask[b, p] = True
    ids[:, S - 1] = ID[SEP]
    label = torch.tensor([ID[LABELS[int(c)]] for c in cls])
    return ids, label, key_mask, nk


def build_model():
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                      conv_kernel=4, time_step_rank=2, use_conv_bias=True, use_bias=False,
                      tie_word_embeddings=True, use_cache=False, pad_token_id=PAD,
                      bos_token_id=PAD, eos_token_id=PAD)
    torch.manual_seed(0)
    return MambaForCausalLM(cfg)


@torch.no_grad()
def last_logits(model, ids, chunk=1024):
    out = []
    for i in range(0, ids.shape[0], chunk):
        out.append(model(input_ids=ids[i:i + chunk], use_cache=False).logits[:, -1, :].float())
    return torch.cat(out)


def train(model):
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * max(0.05, 1 - s / STEPS))
    model.train()
    t0 = time.time()
    for step in range(STEPS):
        ids, label, _, _ = make_batch(BATCH, g)
        logits = model(input_ids=ids, use_cache=False).logits[:, -1, :]
        loss = torch.nn.functional.cross_entropy(logits, label)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == STEPS - 1:
            acc = (logits.argmax(-1) == label).float().mean().item()
            print(f"step {step:5d} loss {loss.item():.4f} batch acc {acc:.3f} ({time.time() - t0:.0f}s)",
                  flush=True)
    model.eval()
    return time.time() - t0


def make_tokenizer(path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel(vocab=dict(ID), unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens(SPECIAL)
    tok.save(path)
    return tok


def export(model, ids):
    model.config.return_dict = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (ids[:2],), os.path.join(OUT, "keys_model.onnx"), dynamo=False,
                              opset_version=17, input_names=["input_ids"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            "logits": {0: "batch", 1: "seq"}})
            torch.onnx.export(model, (ids[:1],), os.path.join(OUT, "keys_model_static.onnx"),
                              dynamo=False, opset_version=17, input_names=["input_ids"],
                              output_names=["logits"])
    finally:
        model.config.return_dict = True


def flip_curves(model, ids, target, orders):
    """orders [N,S] int64 -> curves [N,S+1]: c[k] = logit of target at the last position after
    replacing the first k positions of the order by [UNK]."""
    n = ids.shape[0]
    variants = ids[:, None, :].repeat(1, S + 1, 1)  # [N,S+1,S]
    for k in range(1, S + 1):
        rows = torch.arange(n)[:, None]
        variants[rows, k, orders[:, :k]] = UNK
    lg = last_logits(model, variants.reshape(-1, S)).reshape(n, S + 1, V)
    return lg[torch.arange(n), :, target].contiguous()  # lg[b, :, target[b]] -> [N,S+1]


def key_ranks(orders, key_mask):
    ranks = []
    for b in range(orders.shape[0]):
        place = np.empty(S, dtype=np.int64)
        place[orders[b]] = np.arange(1, S + 1)
        ranks.extend(place[key_mask[b]].tolist())
    return np.asarray(ranks, dtype=np.float64)


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    log("keys fixture: models/train_keys_model.py (see its docstring for every definition)")
    log(f"vocab V={V}: " + " ".join(f"{i}:{w}" for i, w in enumerate(VOCAB)))
    log(f"model: MambaForCausalLM (transformers 4.40.1), L=2, d_model=32, d_state=8, d_inner=64, "
        f"conv 4, dt_rank 2, conv bias, tied head; {n_params} parameters")
    log(f"task: S={S} (31 body tokens + '{SEP}'), K=1 or 2 keys of one class at uniform positions "
        f"0..{S - 2}, distractors uniform, [UNK] rate {UNK_RATE}; CE on the last position only")
    secs = train(model)
    print(f"training took {secs:.0f} s", flush=True)  # not in REPORT.txt (keeps it byte-deterministic)
    log(f"training: {STEPS} steps, batch {BATCH}, Adam lr 3e-3 (warm-up 100 steps, then linear decay to 0.05x), "
        f"grad-norm clip 1.0")

    held_ids, held_label, _, held_nk = make_batch(2048, torch.Generator().manual_seed(2))
    pred = last_logits(model, held_ids).argmax(-1)
    acc = (pred == held_label).float().mean().item()
    log(f"held-out accuracy (2048 sequences, seed 2): {acc:.4f} "
        f"(K=1: {(pred == held_label)[held_nk == 1].float().mean().item():.4f}, "
        f"K=2: {(pred == held_label)[held_nk == 2].float().mean().item():.4f})")

    ids, label, key_mask, nk = make_batch(N_EVAL, torch.Generator().manual_seed(3))
    epred = last_logits(model, ids).argmax(-1)
    eacc = (epred == label).float().mean().item()
    log(f"eval-set accuracy (64 sequences, seed 3): {eacc:.4f}")

    # tokenizer + texts
    tok = make_tokenizer(os.path.join(OUT, "tokenizer.json"))
    texts = [" ".join(VOCAB[i] for i in row.tolist()) for row in ids]
    with open(os.path.join(OUT, "eval.txt"), "w") as fh:
        fh.write("\n".join(texts) + "\n")
    enc = np.array([tok.encode(t).ids for t in texts], dtype=np.int64)
    assert np.array_equal(enc, ids.numpy()), "tokenizer does not reproduce input_ids"
    assert tok.decode(ids[0].tolist(), skip_special_tokens=False).split() == texts[0].split()
    log("tokenizer.json: encode(eval.txt line) == input_ids for all 64 lines")

    # relevances
    mamba_lrp.check_against_hf(model, ids)
    r_lrp = mamba_lrp.relevance(model, ids, "mambalrp")
    r_gi = mamba_lrp.relevance(model, ids, "gi", target=r_lrp["target"])
    r_ex = mamba_lrp.relevance(model, ids, "mambalrp", target=r_lrp["target"], silu_rule="exact")
    target = r_lrp["target"]
    f = r_lrp["target_logit"]
    cons = ((r_lrp["relevance"].sum(-1) + r_lrp["relevance_bias"] - f).abs() / f.abs()).max().item()
    log(f"conservation (mambalrp, stabilized): max |sum R + R_bias - f| / |f| = {cons:.2e}")
    assert cons < 1e-4

    # ONNX exports, checked in onnxruntime
    export(model, ids)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    hf_logits = mamba_lrp.original_logits(model, ids).numpy()
    for name, batch in (("keys_model.onnx", None), ("keys_model_static.onnx", 1)):
        sess = ort.InferenceSession(os.path.join(OUT, name), so, providers=["CPUExecutionProvider"])
        x = ids.numpy() if batch is None else ids[:1].numpy()
        got = sess.run(None, {"input_ids": x})[0]
        d = np.abs(got - hf_logits[: x.shape[0]]).max()
        log(f"{name}: onnxruntime vs HF logits on {list(x.shape)}: max |diff| = {d:.2e}")
        assert d < 1e-4

    # the dynamic-axes graph at another length (the exporter unrolled the loop at S=32)
    x16 = ids[:2, S - 16:].numpy()
    try:
        got = ort.InferenceSession(os.path.join(OUT, "keys_model.onnx"), so,
                                   providers=["CPUExecutionProvider"]).run(None, {"input_ids": x16})[0]
        d = np.abs(got - mamba_lrp.original_logits(model, torch.from_numpy(x16)).numpy()).max()
        log(f"keys_model.onnx at [2, 16] (not the traced length): runs, max |diff| vs HF = {d:.2e}")
    except Exception as e:  # noqa: BLE001
        log(f"keys_model.onnx at [2, 16] (not the traced length): onnxruntime fails: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}")

    # faithfulness
    rng = np.random.default_rng(0)
    random_order = np.stack([rng.permutation(S) for _ in range(N_EVAL)]).astype(np.int64)
    orders = {
        "mambalrp": np.argsort(-r_lrp["relevance"].numpy(), axis=1, kind="stable"),
        "gi": np.argsort(-r_gi["relevance"].numpy(), axis=1, kind="stable"),
        "random": random_order,
    }
    lerf = {
        "mambalrp": np.argsort(r_lrp["relevance"].numpy(), axis=1, kind="stable"),
        "gi": np.argsort(r_gi["relevance"].numpy(), axis=1, kind="stable"),
        "random": random_order[:, ::-1].copy(),
    }
    km = key_mask.numpy()
    curves = {}
    log("")
    log("faithfulness on the 64 eval sequences (flip token [UNK]=1, one position per step, k=0..32; "
        "A = mean of the 33 explained logits; dA = A_LeRF - A_MoRF):")
    log(f"  mean explained logit f (unflipped): {f.mean().item():.4f}")
    log(f"  {'method':9s} {'A_MoRF':>8s} {'A_LeRF':>8s} {'dA^F':>8s} {'(sd)':>7s} {'key rank':>9s} "
        f"{'last 1st':>9s}")
    results = {}
    for m in ("mambalrp", "gi", "random"):
        cm = flip_curves(model, ids, target, torch.from_numpy(orders[m])).numpy()
        cl = flip_curves(model, ids, target, torch.from_numpy(lerf[m])).numpy()
        assert np.allclose(cm[:, 0], f.numpy(), atol=1e-4) and np.allclose(cl[:, 0], f.numpy(), atol=1e-4)
        curves[f"curve_{m}_morf"], curves[f"curve_{m}_lerf"] = cm.astype(np.float32), cl.astype(np.float32)
        a_m, a_l = cm.mean(1), cl.mean(1)
        da = a_l - a_m
        kr = key_ranks(orders[m], km)
        last_first = float((orders[m][:, 0] == S - 1).mean())
        results[m] = (a_m.mean(), a_l.mean(), da.mean(), kr.mean())
        log(f"  {m:9s} {a_m.mean():8.4f} {a_l.mean():8.4f} {da.mean():8.4f} {da.std():7.4f} "
            f"{kr.mean():9.2f} {last_first:9.3f}")
    # the stored curves again, from the exported dynamic-axes graph in onnxruntime
    sess = ort.InferenceSession(os.path.join(OUT, "keys_model.onnx"), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for m in ("mambalrp", "gi", "random"):
        for kind, ords in (("morf", orders[m]), ("lerf", lerf[m])):
            var = np.repeat(ids.numpy()[:, None, :], S + 1, axis=1)
            for k in range(1, S + 1):
                var[np.arange(N_EVAL)[:, None], k, ords[:, :k]] = UNK
            lg = sess.run(None, {"input_ids": var.reshape(-1, S)})[0][:, -1, :].reshape(N_EVAL, S + 1, V)
            c = lg[np.arange(N_EVAL), :, target.numpy()]
            worst = max(worst, float(np.abs(c - curves[f"curve_{m}_{kind}"]).max()))
    log(f"  curves recomputed with keys_model.onnx in onnxruntime: max |diff| = {worst:.2e}")
    assert worst < 1e-3
    # random baseline over more permutations, for context (not stored)
    rng2 = np.random.default_rng(1)
    das = []
    for _ in range(4):
        ro = np.stack([rng2.permutation(S) for _ in range(N_EVAL)]).astype(np.int64)
        cm = flip_curves(model, ids, target, torch.from_numpy(ro)).numpy()
        cl = flip_curves(model, ids, target, torch.from_numpy(ro[:, ::-1].copy())).numpy()
        das.append((cl.mean(1) - cm.mean(1)).mean())
    log(f"  (random, 4 more permutation draws, default_rng(1): dA^F = {', '.join(f'{d:.4f}' for d in das)})")
    # how many key instances, and key-rank breakdown
    log(f"  key instances: {int(km.sum())} ({int((nk == 1).sum())} inputs with K=1, {int((nk == 2).sum())} with K=2)")
    for m in ("mambalrp", "gi"):
        rel = (r_lrp if m == "mambalrp" else r_gi)["relevance"].numpy()
        top_is_key_or_last = np.mean([km[b, orders[m][b, 0]] or orders[m][b, 0] == S - 1 for b in range(N_EVAL)])
        keys_top = np.mean([set(np.flatnonzero(km[b])) <= set(orders[m][b, :int(nk[b]) + 1].tolist())
                            for b in range(N_EVAL)])
        log(f"  {m}: top-1 position is a key or the last position in {top_is_key_or_last:.3f} of inputs; "
            f"all keys within the top K+1 in {keys_top:.3f}; mean R at keys {rel[km].mean():.4f}, "
            f"at the last position {rel[:, -1].mean():.4f}, at distractors {rel[~km & (np.arange(S) < S - 1)].mean():.4f}")
    rb = r_lrp["relevance_bias"].numpy()
    share = rb / f.numpy()
    log(f"  relevance_bias (mambalrp, stabilized): mean {rb.mean():.4f}; share R_bias/f mean {share.mean():.3f} "
        f"(min {share.min():.3f}, max {share.max():.3f}); mean R_bias / mean f = {rb.mean() / f.mean().item():.3f}")
    gi_res = (r_gi["relevance"].sum(-1) - f).abs() / f.abs()
    log(f"  gi: |sum R - f| / |f| mean {gi_res.mean().item():.3f} (GI does not conserve)")

    # files
    save_npz(os.path.join(OUT, "eval.npz"),
             input_ids=ids.numpy(), label=label.numpy(), key_mask=km,
             key_positions=np.array([np.pad(np.flatnonzero(r), (0, 2 - r.sum()), constant_values=-1) for r in km],
                                    dtype=np.int64),
             num_keys=nk.numpy().astype(np.int64),
             target=target.numpy(), target_logit=f.numpy(),
             mambalrp_relevance=r_lrp["relevance"].numpy(), mambalrp_relevance_bias=rb,
             gi_relevance=r_gi["relevance"].numpy(), random_order=random_order, **curves)
    sl = slice(0, N_REF)
    save_npz(os.path.join(OUT, "keys_model.ref.npz"),
             input_ids=ids[sl].numpy(), logits=hf_logits[sl], target=target[sl].numpy(),
             target_logit=f[sl].numpy(),
             mambalrp_relevance=r_lrp["relevance"][sl].numpy(),
             mambalrp_relevance_embedding=r_lrp["relevance_embedding"][sl].numpy(),
             mambalrp_relevance_bias=rb[sl],
             gi_relevance=r_gi["relevance"][sl].numpy(),
             gi_relevance_embedding=r_gi["relevance_embedding"][sl].numpy(),
             mambalrp_exact_relevance=r_ex["relevance"][sl].numpy(),
             mambalrp_exact_relevance_embedding=r_ex["relevance_embedding"][sl].numpy(),
             mambalrp_exact_relevance_bias=r_ex["relevance_bias"][sl].numpy())

    # example explanations
    log("")
    log("examples (eval 0..3): tokens with MambaLRP relevance, keys marked *")
    for b in range(4):
        rel = r_lrp["relevance"][b].numpy()
        top = orders["mambalrp"][b, :4]
        log(f"  [{b}] label {VOCAB[int(label[b])]}, f={f[b].item():.3f}, R_bias={rb[b]:.3f}; top-4: "
            + ", ".join(f"{VOCAB[int(ids[b, t])]}{'*' if km[b, t] else ''}@{t} {rel[t]:.3f}" for t in top))
    log("")
    total = 0
    for name in sorted(os.listdir(OUT)):
        if name != "REPORT.txt":
            sz = os.path.getsize(os.path.join(OUT, name))
            total += sz
            log(f"  {name}: {sz} bytes")
    log(f"  total (without REPORT.txt): {total} bytes")
    with open(os.path.join(OUT, "REPORT.txt"), "w") as fh:
        fh.write("\n".join(LOG) + "\n")


if __name__ == "__main__":
    main()
