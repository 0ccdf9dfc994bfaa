"""A tiny reference Vision Mamba (Vim) in PyTorch, with the MambaLRP rules as detaches.

Layout ("bimambav2, middle cls token, abs pos embed, div2", the Vim variant the official
MambaLRP code explains):

* patch embedding: ``Conv2d(C, d, kernel=patch, stride=patch, bias=True)``, then
  ``flatten(2).transpose(1, 2)`` -> ``[B, M, d]`` (M = number of patches);
* class token ``[1, 1, d]`` inserted at ``token_position = M // 2``:
  ``cat(x[:, :M//2], cls, x[:, M//2:])`` -> ``M + 1`` tokens; ``+ pos_embed [1, M+1, d]``;
* blocks (Vim ``Block``, non-fused add + norm): ``residual = hidden + residual`` (or
  ``hidden`` for the first block), ``hidden = RMSNorm(residual)``, ``hidden = mixer(hidden)``;
  after the loop ``residual = residual + hidden; hidden = norm_f(residual)``;
  ``logits = head(hidden[:, token_position, :])`` (``Linear(d, classes, bias=True)``);
* RMSNorm written as transformers' ``MambaRMSNorm``;
* bidirectional (v2) mixer: ``xz = in_proj(h).transpose(1, 2)``; a forward branch on ``xz``
  and a backward branch on ``xz.flip([-1])``, each with its own conv1d (depthwise, bias),
  x_proj, dt_proj (bias), A_log and D, each computed exactly as transformers 4.40's
  ``MambaMixer.slow_forward`` (same op sequence, incl. its ``.float()`` / ``.to(dtype)``
  casts, so that an ONNX export shows the same node patterns as an HF Mamba export); then
  ``out_proj(((y_f + y_b.flip([-1])) / 2).transpose(1, 2))`` (Vim's ``if_devide_out``).

Two mixer layouts, ``VimConfig.layout`` (same parameters, same state_dict keys, same function:
the same weights give the same logits and relevances, equal in float32 on CPU; only plain
gradient x input differs, by ~5e-7 relative, from the reordered backward sums):

* ``"hf"`` (default; what vim_tiny / vim_zerobias export): the HF slow path above
  (``Direction.forward``);
* ``"official"`` (``Direction.forward_official``): the mixer written as the official MambaLRP
  code writes Vision Mamba (mamba_lrp/model/vision_mamba.py: ``ModifiedMamba.forward``,
  ``mamba_inner_fn_no_out_proj``, ``selective_scan_fn``), with ``torch.einsum`` for einops'
  ``einsum`` and transpose / reshape for ``rearrange``: ``xz = in_proj(h)`` as ``b d l``;
  ``x, z = xz.chunk(2, 1)``; ``z`` to ``b l d``; ``conv1d(x)[..., :L]`` to ``b l d``; act;
  ``x_proj`` then reshaped ``(b l) d``; ``split`` into dt, B, C; ``dt`` back to ``b l r``,
  ``softplus(dt_proj(dt))``; B, C to ``b l n``; ``deltaA = exp(einsum('bld,dn->bldn'))``,
  ``deltaB = einsum('bld,bln->bldn')``, ``deltaB_u = einsum('bldn,bld->bldn')``; the loop
  ``x = deltaA[:, i] * x + deltaB_u[:, i]; y_i = einsum('bdn,bn->bd', x, C[:, i])``;
  ``stack(dim=1)``; ``+ u * D``; ``* act(z)``; directions give ``[B, L, d_inner]``;
  ``out_proj((out + out_b.flip([1])) / 2)``. The rules sit in the same places (detach of
  deltaA, deltaB, C; SiLU rule on the conv and gate branches; gate half rule; RMSNorm).

Modes of ``TinyVim.forward(pixel_values, lrp=False, silu_rule="stabilized",
patch_rule="plain", bias_leaves=None)``:

* ``lrp=False``: the plain model (what is exported to ONNX; the compiler adds the rules);
* ``lrp=True``: the MambaLRP rules, in both directions of every block, in the conventions
  of models/mamba_lrp.py: SiLU identity rule (``silu_rule="stabilized"``, the official form,
  or ``"exact"``; see ``mamba_lrp._silu``) on the conv branch and the gate branch; selection
  stop-gradient (``discrete_A``, ``discrete_B``, ``C`` detached); gate half rule
  (``y = y * act(z); y = y / 2 + (y / 2).detach()`` with act under the SiLU rule); RMSNorm
  rule (rsqrt denominator detached) in every block norm and in norm_f;
* ``patch_rule``: ``"plain"`` / ``"zero"`` (plain conv, plain gradient) or ``"gamma"``:
  LRP-gamma, gamma = 0.25, as the official ``ModifiedConv(transform="gamma")`` computes it
  (see ``gamma_conv2d``).

``bias_leaves`` (a list, lrp mode only): the conv1d biases and the stabilized SiLU rule's
offsets are then added as per-sample leaf tensors and appended, so that the relevance they
absorb, ``sum(leaf * grad)``, can be read (as in models/mamba_lrp.py).

``explain(model, pixel_values, ...)`` returns the relevances at the pixels, the patch tokens
and the tokens (after ``+ pos_embed``, cls included; what the official
``vision_relevance_propagation`` returns). ``python models/vim.py`` runs a self-check.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mamba_lrp  # noqa: E402  (the SiLU rule: mamba_lrp._silu, same conventions)

GAMMA = 0.25
PATCH_RULES = ("plain", "zero", "gamma")
LAYOUTS = ("hf", "official")


@dataclass
class VimConfig:
    img_size: int = 32
    in_chans: int = 3
    patch_size: int = 8
    d_model: int = 48
    expand: int = 2
    d_state: int = 8
    d_conv: int = 4
    dt_rank: int | None = None  # None -> ceil(d_model / 16)
    n_layers: int = 2
    n_classes: int = 10
    eps: float = 1e-5
    seed: int = 2024
    layout: str = "hf"  # mixer op layout: "hf" or "official" (same parameters, same function)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    @property
    def n_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def token_position(self) -> int:
        return self.n_patches // 2


def _f32(t: torch.Tensor) -> torch.Tensor:
    """HF's ``.float()`` / ``.to(torch.float32)``, except that float64 stays float64 (so a
    ``model.double()`` computes in float64 throughout)."""
    return t if t.dtype == torch.float64 else t.float()


def _to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """HF's ``.to(dtype)`` casts back to the input dtype; a no-op under float64."""
    return t if t.dtype == torch.float64 else t.to(dtype)


def gamma_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: int, gamma: float = GAMMA) -> torch.Tensor:
    """LRP-gamma on a conv, as the official ``ModifiedConv(transform='gamma')`` computes it.

    Sign-aware: with ``x+ = x.clamp(min=0)``, ``x- = x.clamp(max=0)``,
    ``W+ = w + gamma * w.clamp(min=0)``, ``W- = w + gamma * w.clamp(max=0)`` (likewise the
    bias, ``b+`` / ``b-``; rule.py's ``modify_bias=False`` modifiers use a zero bias):

    * ``zp_pos = conv(x+, W+, b+) + conv(x-, W-, 0)``, kept where ``z > 1e-6``;
    * ``zp_neg = conv(x+, W-, b-) + conv(x-, W+, 0)``, kept where ``z < 1e-6``;
    * output ``zp * (z / zp).detach()`` with ``zp = zp_pos + zp_neg`` (the forward value is z).
    """
    z = F.conv2d(x, weight, bias, stride=stride)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp = weight + gamma * weight.clamp(min=0)
    wn = weight + gamma * weight.clamp(max=0)
    bp = None if bias is None else bias + gamma * bias.clamp(min=0)
    bn = None if bias is None else bias + gamma * bias.clamp(max=0)
    zp_pos = F.conv2d(xp, wp, bp, stride=stride) + F.conv2d(xn, wn, None, stride=stride)
    zp_neg = F.conv2d(xp, wn, bn, stride=stride) + F.conv2d(xn, wp, None, stride=stride)
    zp_pos = zp_pos * (z > 1e-6)
    zp_neg = zp_neg * (z < 1e-6)
    zp = zp_pos + zp_neg
    return zp * (z / zp).detach()


class RMSNorm(nn.Module):
    """transformers' ``MambaRMSNorm``; ``rule``: the rsqrt denominator detached."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor, rule: bool = False) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = _f32(hidden_states)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        inv = torch.rsqrt(variance + self.variance_epsilon)
        if rule:
            inv = inv.detach()
        hidden_states = hidden_states * inv
        return self.weight * _to(hidden_states, input_dtype)


class Direction(nn.Module):
    """One direction of the v2 bidirectional mixer: conv1d, x_proj, dt_proj, A_log, D."""

    def __init__(self, cfg: VimConfig):
        super().__init__()
        d_inner, n = cfg.d_inner, cfg.d_state
        self.d_inner, self.n_state, self.rank = d_inner, n, cfg.rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, kernel_size=cfg.d_conv, groups=d_inner,
                                padding=cfg.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, cfg.rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(cfg.rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32))
                                  .repeat(d_inner, 1).contiguous())
        self.D = nn.Parameter(torch.ones(d_inner))
        self.act = nn.SiLU()

    def _act(self, x, lrp, silu_rule, bias_leaves):
        if not lrp:
            return self.act(x)
        return mamba_lrp._silu(x, True, silu_rule, bias_leaves)

    def forward(self, xz: torch.Tensor, lrp: bool = False, silu_rule: str = "stabilized",
                bias_leaves: list | None = None) -> torch.Tensor:
        """``xz`` [B, 2*d_inner, L] -> gated scan output [B, d_inner, L]
        (HF ``MambaMixer.slow_forward`` steps 2-3, no cache)."""
        batch_size, _, seq_len = xz.shape
        dtype = xz.dtype
        hidden_states, gate = xz.chunk(2, dim=1)

        ssm_state = torch.zeros((batch_size, self.d_inner, self.n_state),
                                device=hidden_states.device, dtype=dtype)
        conv = self.conv1d
        if lrp and bias_leaves is not None:
            hidden_states = F.conv1d(hidden_states, conv.weight, None, padding=conv.padding[0],
                                     groups=conv.groups)[..., :seq_len]
            cb = conv.bias.detach()[None, :, None].expand(batch_size, -1, 1).clone()
            cb.requires_grad_(True)
            bias_leaves.append(cb)
            hidden_states = hidden_states + cb
        else:
            hidden_states = conv(hidden_states)[..., :seq_len]
        hidden_states = self._act(hidden_states, lrp, silu_rule, bias_leaves)

        ssm_parameters = self.x_proj(hidden_states.transpose(1, 2))
        time_step, B, C = torch.split(ssm_parameters, [self.rank, self.n_state, self.n_state], dim=-1)
        discrete_time_step = self.dt_proj(time_step)
        discrete_time_step = F.softplus(discrete_time_step).transpose(1, 2)

        A = -torch.exp(_f32(self.A_log))
        discrete_A = torch.exp(A[None, :, None, :] * discrete_time_step[:, :, :, None])
        discrete_B = discrete_time_step[:, :, :, None] * _f32(B[:, None, :, :])
        if lrp:  # selection stop-gradient
            discrete_A = discrete_A.detach()
            discrete_B = discrete_B.detach()
            C = C.detach()
        deltaB_u = discrete_B * _f32(hidden_states[:, :, :, None])

        scan_outputs = []
        for i in range(seq_len):
            ssm_state = discrete_A[:, :, i, :] * ssm_state + deltaB_u[:, :, i, :]
            scan_output = torch.matmul(_to(ssm_state, dtype), C[:, i, :].unsqueeze(-1))
            scan_outputs.append(scan_output[:, :, 0])
        scan_output = torch.stack(scan_outputs, dim=-1)
        scan_output = scan_output + (hidden_states * self.D[None, :, None])
        scan_output = scan_output * self._act(gate, lrp, silu_rule, bias_leaves)
        if lrp:  # gate half rule (the official form)
            scan_output = scan_output / 2 + (scan_output / 2).detach()
        return scan_output

    def forward_official(self, xz: torch.Tensor, lrp: bool = False, silu_rule: str = "stabilized",
                         bias_leaves: list | None = None) -> torch.Tensor:
        """``xz`` [B, 2*d_inner, L] -> gated scan output [B, L, d_inner], written as the official
        MambaLRP ``mamba_inner_fn_no_out_proj`` + ``selective_scan_fn``
        (mamba_lrp/model/vision_mamba.py), with ``torch.einsum`` for einops' ``einsum`` and
        transpose / reshape for ``rearrange``. Same parameters and function as ``forward``."""
        batch_size, _, seqlen = xz.shape
        x, z = xz.chunk(2, dim=1)
        z = z.transpose(1, 2)  # rearrange 'b d l -> b l d'

        conv = self.conv1d
        if lrp and bias_leaves is not None:
            x = F.conv1d(x, conv.weight, None, padding=conv.padding[0], groups=conv.groups)[..., :seqlen]
            cb = conv.bias.detach()[None, :, None].expand(batch_size, -1, 1).clone()
            cb.requires_grad_(True)
            bias_leaves.append(cb)
            x = x + cb
        else:
            x = conv(x)[..., :seqlen]
        x = x.transpose(1, 2)  # rearrange 'b d l -> b l d'
        x = self._act(x, lrp, silu_rule, bias_leaves)

        x_dbl = self.x_proj(x).reshape(batch_size * seqlen, -1)  # 'b l d -> (b l) d'
        dt, B, C = torch.split(x_dbl, [self.rank, self.n_state, self.n_state], dim=-1)
        dt = dt.reshape(batch_size, seqlen, self.rank)  # '(b l) d -> b l d'
        dt = F.softplus(self.dt_proj(dt))
        B = B.reshape(batch_size, seqlen, self.n_state).contiguous()
        C = C.reshape(batch_size, seqlen, self.n_state).contiguous()

        A = -torch.exp(_f32(self.A_log))
        # selective_scan_fn(u=x.float(), delta=dt.float(), A, B.float(), C.float(), D.float())
        u, delta, B, C, D = _f32(x), _f32(dt), _f32(B), _f32(C), _f32(self.D)
        deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
        deltaB = torch.einsum("bld,bln->bldn", delta, B)
        if lrp:  # selection stop-gradient (params_to_detach = ['A', 'B', 'C'])
            deltaA = deltaA.detach()
            deltaB = deltaB.detach()
            C = C.detach()
        deltaB_u = torch.einsum("bldn,bld->bldn", deltaB, u)

        state = torch.zeros((batch_size, self.d_inner, self.n_state), device=deltaA.device,
                            dtype=deltaA.dtype)
        ys = []
        for i in range(seqlen):
            state = deltaA[:, i] * state + deltaB_u[:, i]
            ys.append(torch.einsum("bdn,bn->bd", state, C[:, i, :]))
        y = torch.stack(ys, dim=1)
        y = y + u * D

        y = y * self._act(z, lrp, silu_rule, bias_leaves)
        if lrp:  # gate half rule ('z' in params_to_detach)
            y = y / 2 + (y / 2).detach()
        return y


class BiMixer(nn.Module):
    """Vim's bidirectional v2 Mamba mixer with ``if_devide_out=True``."""

    def __init__(self, cfg: VimConfig):
        super().__init__()
        if cfg.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {cfg.layout!r}; choose from {LAYOUTS}")
        self.layout = cfg.layout
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner, bias=False)
        self.fwd = Direction(cfg)
        self.bwd = Direction(cfg)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

    def forward(self, hidden_states, lrp=False, silu_rule="stabilized", bias_leaves=None):
        if self.layout == "official":  # ModifiedMamba.forward
            xz = self.in_proj(hidden_states).transpose(1, 2)  # rearrange 'b l d -> b d l'
            out = self.fwd.forward_official(xz, lrp, silu_rule, bias_leaves)
            out_b = self.bwd.forward_official(xz.flip([-1]), lrp, silu_rule, bias_leaves)
            return self.out_proj((out + out_b.flip([1])) / 2)
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [B, 2*d_inner, L]
        y_f = self.fwd(xz, lrp, silu_rule, bias_leaves)
        y_b = self.bwd(xz.flip([-1]), lrp, silu_rule, bias_leaves)
        return self.out_proj(((y_f + y_b.flip([-1])) / 2).transpose(1, 2))


class Block(nn.Module):
    def __init__(self, cfg: VimConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.eps)
        self.mixer = BiMixer(cfg)

    def forward(self, hidden_states, residual, lrp=False, silu_rule="stabilized", bias_leaves=None):
        residual = hidden_states if residual is None else hidden_states + residual
        hidden_states = self.norm(residual, rule=lrp)
        hidden_states = self.mixer(hidden_states, lrp, silu_rule, bias_leaves)
        return hidden_states, residual


class TinyVim(nn.Module):
    def __init__(self, cfg: VimConfig | None = None, perturb: bool = True):
        super().__init__()
        cfg = cfg or VimConfig()
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        d = cfg.d_model
        self.patch_embed = nn.Conv2d(cfg.in_chans, d, kernel_size=cfg.patch_size,
                                     stride=cfg.patch_size, bias=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, d))
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm_f = RMSNorm(d, cfg.eps)
        self.head = nn.Linear(d, cfg.n_classes, bias=True)
        self.token_position = cfg.token_position
        if perturb:
            self._init_weights()
        self.eval()

    @torch.no_grad()
    def _init_weights(self):
        """Mamba-like structured init (A_log = log(1..N), D = 1, dt biases = inv-softplus of a
        log-uniform dt), then perturbed so that every part matters: norm weights, A_log, D,
        dt and conv biases, head bias get Gaussian noise; dt is drawn from [0.1, 1] (wider
        than Mamba's [1e-3, 1e-1]), the B and C rows of x_proj are scaled x6 and in_proj x2,
        so that the scan carries information between tokens (not only the conv window and
        the D skip) and the image, not only the cls token, decides the logits."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed + 1)

        def noise(t, scale):
            return torch.randn(t.shape, generator=g, dtype=t.dtype) * scale

        self.patch_embed.bias.add_(noise(self.patch_embed.bias, 0.1))
        self.cls_token.copy_(noise(self.cls_token, 0.2))
        self.pos_embed.copy_(noise(self.pos_embed, 0.1))
        for block in self.layers:
            block.norm.weight.add_(noise(block.norm.weight, 0.2))
            block.mixer.in_proj.weight.mul_(2.0)
            for dr in (block.mixer.fwd, block.mixer.bwd):
                bound = cfg.rank ** -0.5
                dr.dt_proj.weight.copy_((torch.rand(dr.dt_proj.weight.shape, generator=g) * 2 - 1) * bound)
                u = torch.rand(cfg.d_inner, generator=g)
                dt = torch.exp(u * (math.log(1.0) - math.log(0.1)) + math.log(0.1))
                dr.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
                dr.dt_proj.bias.add_(noise(dr.dt_proj.bias, 0.2))
                dr.x_proj.weight[cfg.rank:].mul_(6.0)
                dr.A_log.add_(noise(dr.A_log, 0.2))
                dr.D.add_(noise(dr.D, 0.2))
                dr.conv1d.bias.add_(noise(dr.conv1d.bias, 0.1))
        self.norm_f.weight.add_(noise(self.norm_f.weight, 0.2))
        self.head.weight.mul_(2.0)
        self.head.bias.add_(noise(self.head.bias, 0.1))

    @torch.no_grad()
    def zero_biases(self, cls_token: bool = False):
        """Zero every bias and additive constant: patch conv bias, conv1d biases, dt_proj
        biases, head bias, pos_embed; the cls token only with ``cls_token=True``.

        A zero cls token makes the model constant: its residual stream starts at 0, so its
        gate ``in_proj(RMSNorm(0)) = 0`` and ``silu(0) = 0`` zero every mixer output at the
        cls position (both directions, every block), and the head reads ``norm_f(0) = 0``:
        logits = head bias = 0. The cls token is an input token (its relevance is
        ``relevance_tokens[:, token_position]``), not a bias; keep it."""
        self.patch_embed.bias.zero_()
        if cls_token:
            self.cls_token.zero_()
        self.pos_embed.zero_()
        for block in self.layers:
            for dr in (block.mixer.fwd, block.mixer.bwd):
                dr.conv1d.bias.zero_()
                dr.dt_proj.bias.zero_()
        self.head.bias.zero_()
        return self

    # -- pieces (explain() reads the relevance between them) ---------------------------
    def embed_patches(self, pixel_values, patch_rule="plain"):
        if patch_rule not in PATCH_RULES:
            raise ValueError(f"unknown patch_rule {patch_rule!r}; choose from {PATCH_RULES}")
        if patch_rule == "gamma":
            pe = self.patch_embed
            x = gamma_conv2d(pixel_values, pe.weight, pe.bias, pe.stride[0])
        else:
            x = self.patch_embed(pixel_values)
        return x.flatten(2).transpose(1, 2)  # [B, M, d]

    def add_cls_pos(self, x):
        B = x.shape[0]
        t = self.token_position
        cls_token = self.cls_token.expand(B, -1, -1)
        x = torch.cat((x[:, :t, :], cls_token, x[:, t:, :]), dim=1)
        return x + self.pos_embed

    def forward_tokens(self, tokens, lrp=False, silu_rule="stabilized", bias_leaves=None):
        residual = None
        hidden_states = tokens
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, lrp, silu_rule, bias_leaves)
        residual = residual + hidden_states
        hidden_states = self.norm_f(residual, rule=lrp)
        return self.head(hidden_states[:, self.token_position, :])

    def forward(self, pixel_values, lrp=False, silu_rule="stabilized", patch_rule="plain",
                bias_leaves=None):
        mamba_lrp._check_silu_rule(silu_rule)
        tokens = self.add_cls_pos(self.embed_patches(pixel_values, patch_rule))
        return self.forward_tokens(tokens, lrp, silu_rule, bias_leaves)


@torch.no_grad()
def plain_logits(model: TinyVim, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values)


def explain(model: TinyVim, pixel_values: torch.Tensor, target: torch.Tensor | None = None,
            lrp: bool = True, silu_rule: str = "stabilized", patch_rule: str = "gamma") -> dict:
    """One backward of ``sum_b logits[b, target[b]]`` with the rules (``lrp``) on.

    Returns ``target`` (default: argmax of the plain model's logits), ``target_logit`` (under
    the rules; equal to the plain one up to rounding), ``relevance_pixels`` [B,C,H,W]
    (image * grad), ``relevance_patches`` [B,M] (patch tokens before the cls insert),
    ``relevance_tokens`` [B,M+1] (after ``+ pos_embed``, cls included), and
    ``relevance_leaves`` [B] (relevance absorbed by the conv1d biases and the stabilized
    SiLU rule's offsets; zeros without ``lrp``)."""
    if target is None:
        target = plain_logits(model, pixel_values).argmax(-1)
    image = pixel_values.detach().clone().requires_grad_(True)
    patches = model.embed_patches(image, patch_rule)
    tokens = model.add_cls_pos(patches)
    leaves: list = [] if lrp else None
    logits = model.forward_tokens(tokens, lrp, silu_rule, leaves)
    f = logits[torch.arange(image.shape[0]), target]
    grads = torch.autograd.grad(f.sum(), [image, patches, tokens, *(leaves or [])])
    r_leaves = torch.zeros(image.shape[0], dtype=image.dtype, device=image.device)
    for leaf, gl in zip(leaves or [], grads[3:]):
        r_leaves = r_leaves + (leaf * gl).detach().sum(dim=(1, 2))
    return {
        "target": target,
        "target_logit": f.detach(),
        "relevance_pixels": (image * grads[0]).detach(),
        "relevance_patches": (patches * grads[1]).detach().sum(-1),
        "relevance_tokens": (tokens * grads[2]).detach().sum(-1),
        "relevance_leaves": r_leaves,
    }


def _selfcheck():
    torch.set_num_threads(1)
    model = TinyVim()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    print("logits", plain_logits(model, x))
    for zb in (False, True):
        m = TinyVim()
        if zb:
            m.zero_biases()
        for rule in ("gamma", "zero"):
            r = explain(m, x, patch_rule=rule)
            f = r["target_logit"]
            print(f"zero_bias={zb} patch={rule}: f={f.tolist()} "
                  f"sum px={r['relevance_pixels'].sum((1, 2, 3)).tolist()} "
                  f"sum patches={r['relevance_patches'].sum(-1).tolist()} "
                  f"sum tokens={r['relevance_tokens'].sum(-1).tolist()} "
                  f"leaves={r['relevance_leaves'].tolist()}")


if __name__ == "__main__":
    _selfcheck()
