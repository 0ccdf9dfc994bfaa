"""A from-scratch PyTorch Mamba-1 language model in the style of mamba-minimal, with MambaLRP.

The model is written the way single-file "minimal" Mamba re-implementations are (not the Hugging
Face slow path), so that its ONNX exports look different from HF's:

* ``RMSNorm``: a hand-written module, ``x * rsqrt(mean(x^2) + eps) * weight`` (weight last);
* ``MixerBlock``: ``in_proj`` (no bias) -> ``split`` into (x, res) channel-last ``[b, l, d]``;
  x is transposed to ``[b, d, l]`` around the depthwise causal ``conv1d`` (bias on, padding
  k-1, then ``[..., :l]``) and transposed back; ``F.silu``; the SSM; ``y * F.silu(res)``;
  ``out_proj`` (no bias);
* SSM: ``x_dbl = x_proj(x)``; dt, B, C by *slicing* ``x_dbl[..., :R]``, ``x_dbl[..., R:R+N]``,
  ``x_dbl[..., R+N:]``; ``delta = softplus(dt_proj(dt))``; ``A = -exp(A_log)``;
  ``deltaA = exp(einsum('bld,dn->bldn', delta, A))``,
  ``deltaB_u = einsum('bld,bln,bld->bldn', delta, B, u)``; a python loop over time
  ``h = deltaA[:, i] * h + deltaB_u[:, i]``, ``y_i = einsum('bdn,bn->bd', h, C[:, i])``;
  ``stack(dim=1)``; ``y + u * D``;
* ``MinimalMamba``: embedding, blocks ``x = mixer(norm(x)) + x``, ``norm_f``, LM head tied to
  the embedding (``F.linear(x, embedding.weight)``). Everything in float32.

MambaLRP (shared/DESIGN.md section 2; the same four rules as models/mamba_lrp.py, as detaches):

* ``"silu"``: SiLU identity rule on both SiLUs, stabilized form by default, exactly
  models/mamba_lrp.py's ``_silu`` (it is called from there; the ``"exact"`` form on request);
  the stabilized rule's offsets are per-sample leaves counted in ``relevance_bias``;
* ``"norm"``: ``rsqrt(mean(x^2) + eps)`` detached (all L+1 norms);
* ``"ssm"``: delta (after softplus), B and C detached (the selection stop-gradient; deltaA and
  deltaB are functions of delta, B only, so this is mamba_lrp.py's ``discrete_A``,
  ``discrete_B``, ``C`` detach); relevance flows through u (``deltaB_u``'s u factor), the
  linear recurrence and the D skip;
* ``"gate"``: ``p = y * silu(res)``; ``p/2 + (p/2).detach()``.

The conv bias is added after a bias-free conv as a per-sample leaf ``[B, D, 1]`` when
relevances are computed, so its relevance is counted in ``relevance_bias`` (as mamba_lrp.py
does): sum(R) + R_bias = f.

``copy_from_hf(hf_model)`` builds a MinimalMamba with a Hugging Face ``MambaForCausalLM``'s
weights (tied, no in/out_proj bias), so the reference can be checked against mamba_lrp.py
(models/make_variant_fixtures.py does that).
"""

from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mamba_lrp  # noqa: E402

ALL_RULES = mamba_lrp.ALL_RULES


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x, rules=frozenset()):
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if "norm" in rules:
            scale = scale.detach()
        return x * scale * self.weight


class MixerBlock(nn.Module):
    def __init__(self, d_model: int, d_state: int, dt_rank: int, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.d_inner = d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, kernel_size=d_conv, groups=d_inner,
                                padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x, rules=frozenset(), leaves=None, silu_rule="stabilized"):
        b, l, _ = x.shape
        x_and_res = self.in_proj(x)
        x, res = x_and_res.split([self.d_inner, self.d_inner], dim=-1)
        x = x.transpose(1, 2)  # b l d -> b d l
        if leaves is None:
            x = self.conv1d(x)[:, :, :l]
        else:
            x = F.conv1d(x, self.conv1d.weight, None, padding=self.conv1d.padding[0],
                         groups=self.d_inner)[:, :, :l]
            cb = self.conv1d.bias.detach()[None, :, None].expand(b, -1, 1).clone().requires_grad_(True)
            leaves.append(cb)
            x = x + cb
        x = x.transpose(1, 2)  # b d l -> b l d
        x = self._silu(x, rules, leaves, silu_rule)
        y = self.ssm(x, rules)
        p = y * self._silu(res, rules, leaves, silu_rule)
        if "gate" in rules:
            p = 0.5 * p + (0.5 * p).detach()
        return self.out_proj(p)

    @staticmethod
    def _silu(x, rules, leaves, silu_rule):
        if "silu" not in rules:
            return F.silu(x)
        return mamba_lrp._silu(x, True, silu_rule, leaves)

    def ssm(self, u, rules):
        R, N = self.dt_rank, self.d_state
        A = -torch.exp(self.A_log.float())
        x_dbl = self.x_proj(u)
        delta = x_dbl[..., :R]
        B = x_dbl[..., R:R + N]
        C = x_dbl[..., R + N:]
        delta = F.softplus(self.dt_proj(delta))
        if "ssm" in rules:
            delta, B, C = delta.detach(), B.detach(), C.detach()
        deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
        deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, B, u)
        h = torch.zeros(u.shape[0], self.d_inner, N, dtype=u.dtype, device=u.device)
        ys = []
        for i in range(u.shape[1]):
            h = deltaA[:, i] * h + deltaB_u[:, i]
            ys.append(torch.einsum("bdn,bn->bd", h, C[:, i, :]))
        y = torch.stack(ys, dim=1)
        return y + u * self.D


class ResidualBlock(nn.Module):
    def __init__(self, d_model, d_state, dt_rank):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = MixerBlock(d_model, d_state, dt_rank)

    def forward(self, x, rules=frozenset(), leaves=None, silu_rule="stabilized"):
        return self.mixer(self.norm(x, rules), rules, leaves, silu_rule) + x


class MinimalMamba(nn.Module):
    def __init__(self, vocab: int, d_model: int, n_layers: int, d_state: int, dt_rank: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(ResidualBlock(d_model, d_state, dt_rank) for _ in range(n_layers))
        self.norm_f = RMSNorm(d_model)

    def forward(self, input_ids):
        return self.from_embeddings(self.embedding(input_ids))

    def from_embeddings(self, x, rules=frozenset(), leaves=None, silu_rule="stabilized"):
        for layer in self.layers:
            x = layer(x, rules, leaves, silu_rule)
        x = self.norm_f(x, rules)
        return F.linear(x, self.embedding.weight)  # tied LM head


def build(vocab=96, d_model=24, n_layers=2, d_state=4, dt_rank=2, seed=3001) -> MinimalMamba:
    """A random MinimalMamba (fixed seed), every parameter perturbed away from a structured init."""
    torch.manual_seed(seed)
    m = MinimalMamba(vocab, d_model, n_layers, d_state, dt_rank).eval()
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight") or name == "norm_f.weight" or name.endswith("mixer.D"):
                p.add_(0.2 * noise)
            elif name.endswith("A_log"):
                p.add_(0.2 * noise)
            elif name.endswith("dt_proj.bias"):
                # softplus^-1 of dt in [1e-3, 1e-1], then noise
                dt = torch.exp(torch.rand(p.shape, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)) + 0.2 * noise)
            elif name.endswith("conv1d.bias"):
                p.add_(0.1 * noise)
    return m


def copy_from_hf(hf) -> MinimalMamba:
    """A MinimalMamba holding a HF MambaForCausalLM's weights (tied embeddings expected)."""
    cfg = hf.config
    m = MinimalMamba(cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.state_size,
                     int(cfg.time_step_rank)).eval()
    with torch.no_grad():
        m.embedding.weight.copy_(hf.backbone.embeddings.weight)
        assert torch.equal(hf.lm_head.weight, hf.backbone.embeddings.weight), "untied HF model"
        for mine, theirs in zip(m.layers, hf.backbone.layers):
            mine.norm.weight.copy_(theirs.norm.weight)
            mine.norm.eps = theirs.norm.variance_epsilon
            for name in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"):
                src = getattr(theirs.mixer, name)
                dst = getattr(mine.mixer, name)
                dst.weight.copy_(src.weight)
                if dst.bias is not None:
                    dst.bias.copy_(src.bias)
            mine.mixer.A_log.copy_(theirs.mixer.A_log)
            mine.mixer.D.copy_(theirs.mixer.D)
        m.norm_f.weight.copy_(hf.backbone.norm_f.weight)
        m.norm_f.eps = hf.backbone.norm_f.variance_epsilon
    return m


def relevance(model: MinimalMamba, input_ids, rules="mambalrp", target=None, silu_rule="stabilized"):
    """Same contract as models/mamba_lrp.relevance: relevance [B,S], relevance_embedding
    [B,S,H], relevance_bias [B] (conv biases + stabilized-SiLU offsets), target, target_logit,
    logits."""
    rules = mamba_lrp.parse_rules(rules)
    if target is None:
        with torch.no_grad():
            target = model(input_ids)[:, -1].argmax(-1)
    E = model.embedding(input_ids).detach().clone().requires_grad_(True)
    leaves: list = []
    logits = model.from_embeddings(E, rules, leaves, silu_rule)
    f = logits[torch.arange(input_ids.shape[0]), -1, target]
    grads = torch.autograd.grad(f.sum(), [E, *leaves])
    R_E = (E * grads[0]).detach()
    R_bias = torch.zeros(input_ids.shape[0], dtype=E.dtype)
    for c, gr in zip(leaves, grads[1:]):
        R_bias = R_bias + (c * gr).detach().sum(dim=tuple(range(1, c.ndim)))
    return {"relevance": R_E.sum(-1), "relevance_embedding": R_E, "relevance_bias": R_bias,
            "target": target, "target_logit": f.detach(), "logits": logits.detach()}
