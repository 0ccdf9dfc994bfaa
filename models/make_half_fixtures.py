"""Half-precision variants of `tiny_zerobias`: the same weights cast to float16 and to bfloat16
(the Hugging Face slow path then mixes the half type and float32, with Casts), and reference
relevances computed in PyTorch from that model. float16 is exported by the TorchScript exporter
at opset 17. bfloat16 is exported by the dynamo exporter at opset 22: bfloat16 Conv and Mul only
entered the ONNX spec at opset 22, so an opset-17 bfloat16 export is not valid ONNX (the checker
and ONNX Runtime reject its Conv).

Regeneration command (from the repository root, after `bash models/setup.sh`):

    models/.venv/bin/python models/make_half_fixtures.py

Writes models/fixtures/tiny_zerobias_fp16.onnx and tiny_zerobias_bf16.onnx, each with a .ref.npz
(float32 arrays holding half-computed values): input_ids, target_logit, ``mambalrp_relevance``
[B,S] and ``mambalrp_relevance_bias`` [B] with the stabilized SiLU rule (the default; its
``st(z) = z + ((z == 0) + sign(z)) * 1e-6`` is computed in the half type),
``mambalrp_exact_relevance`` and ``mambalrp_exact_relevance_bias`` with the exact SiLU rule
(models/mamba_lrp.py). The model has zero conv biases, so R_bias is only the relevance absorbed
by the stabilized rule's offsets (0 for the exact rule).
"""
import os
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_fixtures  # noqa: E402
import make_length_fixtures  # noqa: E402
import mamba_lrp  # noqa: E402

# suffix: (dtype, dynamo exporter, opset)
VARIANTS = {"fp16": (torch.float16, False, 17), "bf16": (torch.bfloat16, True, 22)}


def export(suffix, dtype, dynamo, opset):
    spec = next(s for s in make_fixtures.FIXTURES if s["name"] == "tiny_zerobias")
    model = make_fixtures.build_model(spec).to(dtype)
    ids = make_fixtures.make_inputs(spec)
    name = f"tiny_zerobias_{suffix}"
    path = os.path.join(make_fixtures.OUT, f"{name}.onnx")
    model.config.return_dict = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra = {"external_data": False} if dynamo else {}
        torch.onnx.export(model, (ids,), path, dynamo=dynamo, opset_version=opset,
                          input_names=["input_ids"], output_names=["logits"], **extra)
    if dynamo:
        make_fixtures.drop_stack_traces(path)
    model.config.return_dict = True
    ref = mamba_lrp.relevance(model, ids, "mambalrp")
    exact = mamba_lrp.relevance(model, ids, "mambalrp", ref["target"], silu_rule="exact")
    make_fixtures.save_npz(
        os.path.join(make_fixtures.OUT, f"{name}.ref.npz"),
        input_ids=ids.numpy(),
        mambalrp_relevance=ref["relevance"].detach().float().numpy(),
        target_logit=ref["target_logit"].detach().float().numpy(),
        mambalrp_relevance_bias=ref["relevance_bias"].detach().float().numpy(),
        **make_fixtures.reference_arrays(exact, "mambalrp_exact", embedding=False),
    )
    f32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in ref.items()}
    f32_exact = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in exact.items()}
    make_length_fixtures.report(name, f32, f32_exact)


def main():
    torch.set_num_threads(1)
    for suffix, (dtype, dynamo, opset) in VARIANTS.items():
        export(suffix, dtype, dynamo, opset)


if __name__ == "__main__":
    main()
