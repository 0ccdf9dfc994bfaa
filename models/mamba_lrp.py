"""Reference MambaLRP for Hugging Face ``MambaForCausalLM`` (PyTorch ground truth).

This is our own re-implementation of the HF *slow path* forward
(``MambaMixer.slow_forward``: the python time loop; ``MambaBlock``;
``MambaRMSNorm``; ``MambaForCausalLM``) that reads an HF model's parameters and
can apply any subset of the four MambaLRP rules via ``.detach()``
(see shared/DESIGN.md section 2):

* ``"silu"``: SiLU identity rule (conv branch and gate branch), in one of two forms
  chosen by ``silu_rule``:

  - ``"stabilized"`` (default; the official MambaLRP code's form):
    ``st(x) * (silu(x) / st(x)).detach()`` with
    ``st(z) = z + ((z == 0) + sign(z)) * 1e-6`` (computed in x's dtype). We write it as
    ``x * c + b`` with ``c = (silu(x) / st(x)).detach()`` and
    ``b = silu(x) - x * c`` (value detached): the 1e-6 stabilizer makes the rule affine
    rather than linear in x, and ``b`` is the constant it adds. ``b`` is a per-sample leaf
    (like the conv1d bias, see below), so the relevance it absorbs, ``sum(b * db)``, is
    part of ``relevance_bias``. The forward value is ``silu(x)`` up to rounding. The two
    forms differ visibly only where ``|x| <~ 1e-5``.
  - ``"exact"``: ``x * sigmoid(x).detach()`` (linear in x; ``b = 0``).

  ``silu(x)`` is computed as ``x * sigmoid(x)`` (the exported graphs' form).
* ``"norm"``: RMSNorm rule ``x * rsqrt(mean(x^2)+eps).detach() * w`` (all L+1 norms).
* ``"ssm"``: selective SSM rule: ``discrete_A``, ``discrete_B`` and ``C`` are
  detached (dt, B, C from x_proj are frozen); relevance flows only through u,
  the (then linear) recurrence and the D skip.
* ``"gate"``: half rule on the gate product ``p = y*silu(z)``:
  ``out = p/2 + (p/2).detach()``.

``"mambalrp"`` = all four rules; ``"gi"`` = none (plain gradient x input).

Relevance: ``R_E = E * dE`` where ``E`` is the embedding output and the
explained function is ``f = logits[b, -1, target_b]`` summed over the batch
(samples are independent, so the per-sample gradients are unchanged);
``target`` is the argmax of the *original* (rule-free) logits at the last
position.  ``R_token[b, t] = sum_d R_E[b, t, d]``.

Conservation: ``sum_t R_token[b, t] + R_bias[b] = f[b]`` up to rounding, where ``R_bias``
is the relevance absorbed by the additive constants on the relevance path: the conv1d
biases and, under the stabilized SiLU rule, the SiLU offsets ``b`` (tiny, but non-zero
even for zero-conv-bias models).

Precision: float32 and half models follow HF (norms, the scan's discretization and the
residual stream upcast to float32). A ``model.double()`` is computed in float64 throughout
(where HF would still upcast to float32 only); models/make_fixtures.py uses that to bound
the float32 rounding of the references.

FalconMamba (``FalconMambaForCausalLM``, transformers 5.x) is handled too: its mixer's
weightless RMSNorms on dt, B and C (after x_proj) are computed; under ``"ssm"`` dt, B and C are
detached after them, so no relevance passes through them; the ``"norm"`` rule detaches their
rsqrt as well (it only matters for rule subsets without ``"ssm"``).

Run ``python models/mamba_lrp.py`` for a self-check on a random tiny model.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

ALL_RULES = frozenset({"silu", "norm", "ssm", "gate"})
SILU_RULES = ("stabilized", "exact")
STABILIZER = 1e-6


def parse_rules(rules) -> frozenset:
    """Accept "mambalrp", "gi", a comma separated string or an iterable of rule names."""
    if rules is None:
        return ALL_RULES
    if isinstance(rules, str):
        if rules == "mambalrp":
            return ALL_RULES
        if rules in ("gi", ""):
            return frozenset()
        rules = [r.strip() for r in rules.split(",") if r.strip()]
    out = frozenset(rules)
    unknown = out - ALL_RULES
    if unknown:
        raise ValueError(f"unknown rules {sorted(unknown)}; choose from {sorted(ALL_RULES)}")
    return out


def _check_silu_rule(silu_rule: str) -> str:
    if silu_rule not in SILU_RULES:
        raise ValueError(f"unknown silu_rule {silu_rule!r}; choose from {SILU_RULES}")
    return silu_rule


def stabilize(z: torch.Tensor) -> torch.Tensor:
    """``z + ((z == 0) + sign(z)) * 1e-6`` in z's dtype (moves z away from 0 by 1e-6)."""
    return z + ((z == 0).to(z.dtype) + torch.sign(z)) * STABILIZER


def _silu(x: torch.Tensor, rule: bool, silu_rule: str = "stabilized",
          bias_leaves: list | None = None) -> torch.Tensor:
    """``x * sigmoid(x)``; with ``rule`` the SiLU identity rule in form ``silu_rule``.

    Stabilized form: ``x * c + b``, ``c = sg(silu(x) / st(x))``, ``b = sg(silu(x) - x * c)``.
    If ``bias_leaves`` is a list, ``b`` is made a leaf that requires grad and appended to it
    (its relevance ``sum(b * db)`` is then counted in ``relevance_bias``)."""
    s = torch.sigmoid(x)
    if not rule:
        return x * s
    if _check_silu_rule(silu_rule) == "exact":
        return x * s.detach()
    with torch.no_grad():
        silu = x * s
        c = silu / stabilize(x)
        b = silu - x * c
    if bias_leaves is not None:
        b = b.clone().requires_grad_(True)
        bias_leaves.append(b)
    return x * c + b


def _up(t: torch.Tensor) -> torch.Tensor:
    """HF's ``.float()`` / ``.to(float32)`` upcasts, except that float64 stays float64
    (so that a ``model.double()`` is computed in float64 throughout)."""
    return t if t.dtype == torch.float64 else t.float()


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, rule: bool) -> torch.Tensor:
    # HF MambaRMSNorm: hidden.to(float32); var = mean(x^2); x * rsqrt(var+eps); weight * x
    input_dtype = x.dtype
    x = _up(x)
    variance = x.pow(2).mean(-1, keepdim=True)
    inv = torch.rsqrt(variance + eps)
    if rule:
        inv = inv.detach()
    return weight * (x * inv).to(input_dtype)


def _weightless_rmsnorm(x: torch.Tensor, eps: float, rule: bool) -> torch.Tensor:
    """FalconMamba's ``FalconMambaWeightlessRMSNorm`` (on dt, B and C after x_proj):
    ``(x.float() * rsqrt(mean(x^2) + eps)).type_as(x)``; with ``rule`` the rsqrt is detached
    (the norm rule). These norms sit on the selection path, which the ``"ssm"`` rule freezes
    (dt, B, C are detached after them), so under ``mambalrp`` no relevance passes through them
    and the choice only matters for rule subsets without ``"ssm"``."""
    xf = _up(x)
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if rule:
        inv = inv.detach()
    return (xf * inv).to(x.dtype)


def _mixer(mixer, x_in: torch.Tensor, rules: frozenset, bias_leaves: list | None = None,
           silu_rule: str = "stabilized") -> torch.Tensor:
    """HF MambaMixer.slow_forward without cache, with optional rules.

    If ``bias_leaves`` is a list, the conv1d bias is added after the convolution as a
    per-sample leaf tensor ``[B, D, 1]`` (appended to the list) so that the relevance
    it absorbs, ``sum(c * dc)``, can be read per sample; so are the stabilized SiLU
    rule's offsets ``b`` (``[B, D, S]``, both SiLUs)."""
    batch, seq_len, _ = x_in.shape
    dtype = x_in.dtype
    d_inner = mixer.intermediate_size
    n_state = mixer.ssm_state_size
    r_dt = mixer.time_step_rank

    projected = F.linear(x_in, mixer.in_proj.weight, mixer.in_proj.bias).transpose(1, 2)
    hidden, gate = projected.chunk(2, dim=1)

    conv = mixer.conv1d
    if bias_leaves is None or conv.bias is None:
        hidden = F.conv1d(hidden, conv.weight, conv.bias, stride=1, padding=conv.padding[0],
                          groups=conv.groups)[..., :seq_len]
    else:
        hidden = F.conv1d(hidden, conv.weight, None, stride=1, padding=conv.padding[0],
                          groups=conv.groups)[..., :seq_len]
        cb = conv.bias.detach()[None, :, None].expand(batch, -1, 1).clone().requires_grad_(True)
        bias_leaves.append(cb)
        hidden = hidden + cb
    hidden = _silu(hidden, "silu" in rules, silu_rule, bias_leaves)

    ssm_params = F.linear(hidden.transpose(1, 2), mixer.x_proj.weight)
    time_step, B, C = torch.split(ssm_params, [r_dt, n_state, n_state], dim=-1)
    if hasattr(mixer, "b_layernorm"):
        # FalconMamba: weightless RMSNorms on dt, B and C (selection path; see _weightless_rmsnorm)
        time_step = _weightless_rmsnorm(time_step, mixer.dt_layernorm.eps, "norm" in rules)
        B = _weightless_rmsnorm(B, mixer.b_layernorm.eps, "norm" in rules)
        C = _weightless_rmsnorm(C, mixer.c_layernorm.eps, "norm" in rules)
    dt = F.softplus(F.linear(time_step, mixer.dt_proj.weight, mixer.dt_proj.bias)).transpose(1, 2)
    A = -torch.exp(_up(mixer.A_log))
    discrete_A = torch.exp(A[None, :, None, :] * dt[:, :, :, None])
    discrete_B = dt[:, :, :, None] * _up(B[:, None, :, :])
    if "ssm" in rules:
        discrete_A = discrete_A.detach()
        discrete_B = discrete_B.detach()
        C = C.detach()
    deltaB_u = discrete_B * _up(hidden[:, :, :, None])

    state = torch.zeros((batch, d_inner, n_state), dtype=dtype, device=x_in.device)
    ys = []
    for i in range(seq_len):
        state = discrete_A[:, :, i, :] * state + deltaB_u[:, :, i, :]
        y = torch.matmul(state.to(dtype), C[:, i, :].unsqueeze(-1))
        ys.append(y[:, :, 0])
    y = torch.stack(ys, dim=-1)
    y = y + hidden * mixer.D[None, :, None]

    p = y * _silu(gate, "silu" in rules, silu_rule, bias_leaves)
    if "gate" in rules:
        p = 0.5 * p + (0.5 * p).detach()
    return F.linear(p.transpose(1, 2), mixer.out_proj.weight, mixer.out_proj.bias)


def forward_from_embeddings(model, embeds: torch.Tensor, rules=(), bias_leaves: list | None = None,
                            silu_rule: str = "stabilized") -> torch.Tensor:
    """Logits of an HF MambaForCausalLM, computed from the embedding output ``embeds``."""
    rules = parse_rules(rules) if not isinstance(rules, frozenset) else rules
    _check_silu_rule(silu_rule)
    backbone = model.backbone
    h = embeds
    for layer in backbone.layers:
        residual = h
        hn = _rmsnorm(h.to(layer.norm.weight.dtype), layer.norm.weight,
                      layer.norm.variance_epsilon, "norm" in rules)
        if getattr(layer, "residual_in_fp32", True):
            residual = _up(residual)
        h = residual + _mixer(layer.mixer, hn, rules, bias_leaves, silu_rule)
    nf = backbone.norm_f
    h = _rmsnorm(h, nf.weight, nf.variance_epsilon, "norm" in rules)
    return _up(F.linear(h.to(model.lm_head.weight.dtype), model.lm_head.weight))


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model.backbone.embeddings(input_ids)


@torch.no_grad()
def original_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return forward_from_embeddings(model, embed(model, input_ids), ())


def default_target(model, input_ids: torch.Tensor) -> torch.Tensor:
    """argmax of the original (rule-free) logits at the last position, int64 [B]."""
    return original_logits(model, input_ids)[:, -1, :].argmax(-1)


def relevance(model, input_ids: torch.Tensor, rules="mambalrp", target: torch.Tensor | None = None,
              silu_rule: str = "stabilized"):
    """Return dict with ``relevance`` [B,S], ``relevance_embedding`` [B,S,H],
    ``relevance_bias`` [B] (relevance absorbed by the additive constants on the relevance
    path: the conv1d biases and, with the stabilized SiLU rule, the SiLU offsets),
    ``target`` [B], ``target_logit`` [B] (the logit under the rule set, which has the same
    forward value as the original, up to rounding).

    ``silu_rule``: ``"stabilized"`` (default, the official form) or ``"exact"``; it only
    matters when the ``"silu"`` rule is in ``rules``."""
    rules = parse_rules(rules)
    _check_silu_rule(silu_rule)
    if target is None:
        target = default_target(model, input_ids)
    E = embed(model, input_ids).detach().clone().requires_grad_(True)
    bias_leaves: list = []
    logits = forward_from_embeddings(model, E, rules, bias_leaves, silu_rule)
    batch = torch.arange(input_ids.shape[0])
    f = logits[batch, -1, target]
    grads = torch.autograd.grad(f.sum(), [E, *bias_leaves])
    R_E = (E * grads[0]).detach()
    R_bias = torch.zeros(input_ids.shape[0], dtype=torch.float64 if E.dtype == torch.float64 else torch.float32,
                         device=E.device)
    for c, g in zip(bias_leaves, grads[1:]):
        R_bias = R_bias + (c * g).detach().to(R_bias.dtype).sum(dim=(1, 2))
    return {
        "relevance": R_E.sum(-1),
        "relevance_embedding": R_E,
        "relevance_bias": R_bias,
        "target": target,
        "target_logit": f.detach(),
        "logits": logits.detach(),
    }


def check_against_hf(model, input_ids: torch.Tensor, atol: float = 1e-5) -> float:
    """Assert our rule-free forward reproduces HF's logits; return max abs diff."""
    with torch.no_grad():
        hf = model(input_ids=input_ids, use_cache=False).logits.float()
    ours = original_logits(model, input_ids)
    diff = (hf - ours).abs().max().item()
    assert diff < atol, f"our slow-path forward differs from HF by {diff}"
    return diff


def _selfcheck():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=64, hidden_size=32, state_size=4, num_hidden_layers=2,
                      expand=2, conv_kernel=4, time_step_rank=2, use_cache=False)
    model = MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.conv1d.bias.zero_()
    ids = torch.randint(0, 64, (2, 8))
    print("max |ours - HF| logits:", check_against_hf(model, ids))
    g = relevance(model, ids, "gi")
    print("sum R gi            :", g["relevance"].sum(-1).tolist())
    for silu_rule in SILU_RULES:
        r = relevance(model, ids, "mambalrp", silu_rule=silu_rule)
        f = r["target_logit"]
        print(f"[{silu_rule}] target logit {f.tolist()}, sum R {r['relevance'].sum(-1).tolist()}, "
              f"R_bias {r['relevance_bias'].tolist()}")
        rel = ((r["relevance"].sum(-1) + r["relevance_bias"] - f).abs() / f.abs()).max().item()
        print(f"[{silu_rule}] conservation rel. gap (with R_bias):", rel)
        assert rel < 1e-5
        if silu_rule == "exact":
            assert torch.all(r["relevance_bias"] == 0)


if __name__ == "__main__":
    _selfcheck()
