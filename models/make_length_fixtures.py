"""Length variants of `tiny_zerobias`: the same weights exported at other sequence lengths, to
test that the compiled (re-rolled) graph's size does not depend on the length and that its
relevances still match PyTorch.

Regeneration command (from the repository root, after `bash models/setup.sh`):

    models/.venv/bin/python models/make_length_fixtures.py

Writes models/fixtures/tiny_zerobias_s{S}.onnx (TorchScript), ..._s{S}_dynamo.onnx (dynamo) and
..._s{S}.ref.npz (input_ids, mambalrp_relevance, target_logit) for S in LENGTHS.
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
        make_fixtures.save_npz(
            os.path.join(make_fixtures.OUT, f"{name}.ref.npz"),
            input_ids=ids.numpy(),
            mambalrp_relevance=ref["relevance"].detach().numpy().astype(np.float32),
            target_logit=ref["target_logit"].detach().numpy().astype(np.float32),
        )
        total = ref["relevance"].sum(-1)
        print(f"{name}: target logit {ref['target_logit'].tolist()}, sum(R) {total.tolist()}")


if __name__ == "__main__":
    main()
