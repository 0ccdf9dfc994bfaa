"""`tiny_strongdecay`: long sequences with strong and weak decays, for the numerics of the
parallel scan form (log-space cumulative sums within chunks, doubling between them).

tiny_zerobias' shape with its decays pushed to both extremes: half of the state channels
have A = -exp(A_log) in [-80, -8] and dt_proj biases that make dt ~ 1-3, so a step's log decay
dt * A reaches -240 (far below the parallel form's clamp at -16); the other half have |A| ~ 0.01
and dt ~ 0.01, so state survives for thousands of steps. Exported at 8 tokens (TorchScript and
dynamo); the reference is computed in float64 at 4096 tokens (batch 1) by models/mamba_lrp.py.
A compiled model with a symbolic length runs it (tests/long_sequences.rs).

Regeneration command (from the repository root, after `bash models/setup.sh`):

    models/.venv/bin/python models/make_long_fixture.py

Writes models/fixtures/tiny_strongdecay.onnx, tiny_strongdecay_dynamo.onnx and
tiny_strongdecay.ref.npz with input_ids [1, 4096], target [1], target_logit [1] (float64
forward), ``mambalrp_relevance`` [1, 4096] and ``mambalrp_relevance_bias`` [1] from the float64
reference (stored as float32), and ``float32_relevance`` [1, 4096], the same computed in
float32 by PyTorch (how far float32 itself is from float64).
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_fixtures  # noqa: E402
import mamba_lrp  # noqa: E402

NAME = "tiny_strongdecay"
LENGTH = 4096
SEED = 1009


def build():
    spec = dict(next(s for s in make_fixtures.FIXTURES if s["name"] == "tiny_zerobias"))
    spec.update(name=NAME, seed=SEED)
    model = make_fixtures.build_model(spec)
    g = torch.Generator().manual_seed(SEED + 99)
    with torch.no_grad():
        for layer in model.backbone.layers:
            mx = layer.mixer
            d_inner, state = mx.A_log.shape
            strong = torch.rand(d_inner, generator=g) < 0.5
            fast = torch.empty(d_inner, state).uniform_(np.log(8.0), np.log(80.0), generator=g)
            slow = torch.empty(d_inner, state).uniform_(np.log(0.005), np.log(0.02), generator=g)
            mx.A_log.copy_(torch.where(strong[:, None], fast, slow))
            # softplus(b) ~ 1-3 for strong channels, ~0.01 for slow ones
            bias = torch.where(strong, torch.empty(d_inner).uniform_(0.5, 3.0, generator=g),
                               torch.full((d_inner,), -4.6))
            mx.dt_proj.bias.copy_(bias)
    return spec, model


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    spec, model = build()
    short = make_fixtures.make_inputs(spec)
    make_fixtures.export(model, short, NAME)
    g = torch.Generator().manual_seed(SEED + 4096)
    ids = torch.randint(0, spec["vocab"], (1, LENGTH), generator=g, dtype=torch.int64)
    exact = mamba_lrp.relevance(model.double(), ids, "mambalrp")
    single = mamba_lrp.relevance(model.float(), ids, "mambalrp", exact["target"])
    r64 = exact["relevance"].numpy()
    r32 = single["relevance"].detach().numpy()
    make_fixtures.save_npz(
        os.path.join(make_fixtures.OUT, f"{NAME}.ref.npz"),
        input_ids=ids.numpy(),
        target=exact["target"].numpy(),
        target_logit=exact["target_logit"].numpy().astype(np.float32),
        mambalrp_relevance=r64.astype(np.float32),
        mambalrp_relevance_bias=exact["relevance_bias"].numpy().astype(np.float32),
        float32_relevance=r32.astype(np.float32),
    )
    scale = np.abs(r64).max()
    residual = (exact["target_logit"] - exact["relevance"].sum(-1) - exact["relevance_bias"]).abs()
    print(f"{NAME}: {LENGTH} tokens, target logit {exact['target_logit'].tolist()}, "
          f"max|R| {scale:.3e}, float32 vs float64 max|diff|/max|R| "
          f"{np.abs(r32 - r64).max() / scale:.2e}, float64 conservation residual "
          f"{residual.max().item():.2e}; tokens with |R| > 1e-3 max|R|: "
          f"{int((np.abs(r64) > 1e-3 * scale).sum())}")


if __name__ == "__main__":
    main()
