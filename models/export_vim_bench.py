"""Export a real-size (random-weight) Vision Mamba for trying the compiler as a user would.

Command (from the repository root, after `bash models/setup.sh`; niced, the machine is shared):

    nice -n 10 models/.venv/bin/python models/export_vim_bench.py [--dynamo]

What it builds: models/vim.py's TinyVim at the shape of Vim-tiny (hustvl/Vim
`vim_tiny_patch16_224_bimambav2`): 224x224 RGB images, 16x16 patches (196 patches + a class
token in the middle = 197 tokens), d_model 192, d_inner 384, d_state 16, dt_rank 12, 24
bidirectional blocks, 1000 classes; random weights (fixed seed), perturbed as the fixtures'.
Export: TorchScript (opset 17; with --dynamo the dynamo exporter, opset 18), static shapes,
batch 1, input ``pixel_values`` float32 [1, 3, 224, 224], output ``logits`` [1, 1000], to
``models/bench/vim_tiny224[_dynamo].onnx`` (git-ignored). Prints the export time, the file
size and the node count.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vim import TinyVim, VimConfig  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dynamo", action="store_true", help="use the dynamo exporter")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = VimConfig(img_size=224, patch_size=16, d_model=192, d_state=16, n_layers=24,
                    n_classes=1000)
    model = TinyVim(cfg)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    os.makedirs(OUT, exist_ok=True)
    name = "vim_tiny224" + ("_dynamo" if args.dynamo else "")
    path = os.path.join(OUT, f"{name}.onnx")
    start = time.time()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if args.dynamo:
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(model, (image,), path, dynamo=True, opset_version=18,
                                  external_data=False, input_names=["pixel_values"],
                                  output_names=["logits"])
        else:
            torch.onnx.export(model, (image,), path, dynamo=False, opset_version=17,
                              input_names=["pixel_values"], output_names=["logits"])
    elapsed = time.time() - start
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    print(f"{path}: exported in {elapsed:.1f} s, {os.path.getsize(path) / 1e6:.1f} MB, "
          f"{len(graph.node)} nodes; top ops {ops.most_common(6)}")


if __name__ == "__main__":
    main()
