"""Validate ONNX models with onnx.checker's full check (types and shapes inferred too).

Usage: python scripts/check_models.py MODEL.onnx [MODEL.onnx ...]
Exit status 1 if any model fails, naming it and the checker's message.
"""
import sys

import onnx


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: check_models.py MODEL.onnx [...]", file=sys.stderr)
        return 2
    failed = 0
    for path in paths:
        try:
            onnx.checker.check_model(onnx.load(path), full_check=True)
            print(f"ok      {path}")
        except Exception as error:  # the checker raises several exception types
            failed += 1
            print(f"INVALID {path}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
