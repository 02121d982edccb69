#!/usr/bin/env python3
"""Compare two float32 .npy logit files as tests/gpu/test_cuda_forward.cpp does.

usage: compare_npy.py GOT.npy WANT.npy REL_TOL

Prints max |got - want| / max |want| over the non-NaN entries (NaN marks padding rows of shorter
sequences; their positions must agree) and how many rows agree on the argmax. Exit 0 when the
relative difference is within REL_TOL, 1 otherwise. Standard library only: the device machine's
python3 is not known to have numpy.
"""
import array
import ast
import math
import sys


def read_npy_f32(path):
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy file")
        major = f.read(2)[0]
        header_len = int.from_bytes(f.read(2 if major == 1 else 4), "little")
        header = ast.literal_eval(f.read(header_len).decode("latin1"))
        if header["descr"] != "<f4" or header["fortran_order"]:
            raise ValueError(f"{path}: expected little-endian float32 in C order, got {header}")
        data = array.array("f")
        data.frombytes(f.read())
    if sys.byteorder != "little":
        data.byteswap()
    return tuple(header["shape"]), data


def main():
    got_path, want_path, rel_tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
    got_shape, got = read_npy_f32(got_path)
    want_shape, want = read_npy_f32(want_path)
    if got_shape != want_shape:
        print(f"shape mismatch: {got_shape} vs {want_shape}")
        return 1
    vocab = want_shape[-1]
    max_diff = max_ref = 0.0
    rows = agree = 0
    for start in range(0, len(want), vocab):
        g, w = got[start:start + vocab], want[start:start + vocab]
        if math.isnan(w[0]) != math.isnan(g[0]):
            print(f"NaN (padding) rows differ at row {start // vocab}")
            return 1
        if math.isnan(w[0]):
            continue
        rows += 1
        agree += max(range(vocab), key=g.__getitem__) == max(range(vocab), key=w.__getitem__)
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(g, w)))
        max_ref = max(max_ref, max(abs(b) for b in w))
    rel = max_diff / max_ref if max_ref > 0 else math.inf
    ok = rel <= rel_tol
    print(f"shape {list(want_shape)}: max abs diff {max_diff:.3g}, relative {rel:.3g} "
          f"(tolerance {rel_tol:g}), argmax agrees on {agree}/{rows} rows: "
          f"{'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
