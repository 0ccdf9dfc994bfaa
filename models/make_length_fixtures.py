"""Length variants of `tiny_zerobias`: the same weights exported at other sequence lengths, to
test that the compiled (re-rolled) graph's size does not depend on the length and that its
relevances still match PyTorch.

Regeneration command (from the repository root, after `bash models/setup.sh`):

    models/.venv/bin/python models/make_length_fixtures.py

Writes models/fixtures/tiny_zerobias_s{S}.onnx (TorchScript), ..._s{S}_dynamo.onnx (dynamo) and
..._s{S}.ref.npz for S in LENGTHS, holding input_ids, target_logit, and the MambaLRP references
(models/mamba_lrp.py) ``mambalrp_relevance`` [B,S] and ``mambalrp_relevance_bias`` [B] with the
stabilized SiLU rule (the default), ``mambalrp_exact_relevance`` and
``mambalrp_exact_relevance_bias`` with the exact SiLU rule. The model has zero conv biases, so
R_bias is only the (tiny) relevance absorbed by the stabilized rule's offsets (0 for the exact
rule); sum(R) + R_bias = target_logit.
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_fixtures  # noqa: E402
import mamba_lrp  # noqa: E402

LENGTHS = [4, 16]


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    spec = next(s for s in make_fixtures.FIXTURES if s["name"] == "tiny_zerobias")
    model = make_fixtures.build_model(spec)
    for length in LENGTHS:
        g = torch.Generator().manual_seed(spec["seed"] + 777 + length)
        ids = torch.randint(0, spec["vocab"], (make_fixtures.BATCH, length), generator=g, dtype=torch.int64)
        name = f"tiny_zerobias_s{length}"
        make_fixtures.export(model, ids, name)
        ref = mamba_lrp.relevance(model, ids, "mambalrp")
        exact = mamba_lrp.relevance(model, ids, "mambalrp", ref["target"], silu_rule="exact")
        make_fixtures.save_npz(
            os.path.join(make_fixtures.OUT, f"{name}.ref.npz"),
            input_ids=ids.numpy(),
            mambalrp_relevance=ref["relevance"].detach().numpy().astype(np.float32),
            target_logit=ref["target_logit"].detach().numpy().astype(np.float32),
            mambalrp_relevance_bias=ref["relevance_bias"].detach().numpy().astype(np.float32),
            **make_fixtures.reference_arrays(exact, "mambalrp_exact", embedding=False),
        )
        report(name, ref, exact)


def report(name, ref, exact):
    total = ref["relevance"].sum(-1)
    d_tok, _, d_bias = make_fixtures.silu_rule_comparison(ref, exact)
    print(f"{name}: target logit {ref['target_logit'].tolist()}, sum(R) {total.tolist()}, "
          f"R_bias {ref['relevance_bias'].tolist()}; conservation residual rel "
          f"stabilized {make_fixtures.conservation(ref).max().item():.3e}, "
          f"exact {make_fixtures.conservation(exact).max().item():.3e}; "
          f"stabilized vs exact rel max diff token {d_tok:.3e}, R_bias {d_bias:.3e}")


if __name__ == "__main__":
    main()
