"""A float16 variant of `tiny_zerobias`: the same weights cast to float16, exported by the
TorchScript exporter (the Hugging Face slow path then mixes float16 and float32, with Casts), and
reference relevances computed in PyTorch from that float16 model.

Regeneration command (from the repository root, after `bash models/setup.sh`):

    models/.venv/bin/python models/make_fp16_fixture.py

Writes models/fixtures/tiny_zerobias_fp16.onnx and tiny_zerobias_fp16.ref.npz (input_ids,
mambalrp_relevance, target_logit, all float32 arrays holding float16-computed values).
"""
import os
import sys
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_fixtures  # noqa: E402
import mamba_lrp  # noqa: E402


def main():
    torch.set_num_threads(1)
    spec = next(s for s in make_fixtures.FIXTURES if s["name"] == "tiny_zerobias")
    model = make_fixtures.build_model(spec).to(torch.float16)
    ids = make_fixtures.make_inputs(spec)
    name = "tiny_zerobias_fp16"
    path = os.path.join(make_fixtures.OUT, f"{name}.onnx")
    model.config.return_dict = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids,), path, dynamo=False, opset_version=17,
                          input_names=["input_ids"], output_names=["logits"])
    model.config.return_dict = True
    ref = mamba_lrp.relevance(model, ids, "mambalrp")
    make_fixtures.save_npz(
        os.path.join(make_fixtures.OUT, f"{name}.ref.npz"),
        input_ids=ids.numpy(),
        mambalrp_relevance=ref["relevance"].detach().float().numpy(),
        target_logit=ref["target_logit"].detach().float().numpy(),
    )
    print(f"{name}: target logit {ref['target_logit'].tolist()}, sum(R) {ref['relevance'].float().sum(-1).tolist()}")


if __name__ == "__main__":
    main()
