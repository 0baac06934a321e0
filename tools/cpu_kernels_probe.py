"""Which CPU kernels torch uses here, and a fingerprint of their results.

    python tools/cpu_kernels_probe.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python tools/cpu_kernels_probe.py
    env $(python tools/cpu_kernels_probe.py --another-isa) python tools/cpu_kernels_probe.py

The test suite runs its numerically sensitive tests a second time under another instruction set (.ci/run).
That second pass only proves something if the setting really moves torch onto other kernels: this script
prints the capability ATen dispatches to and a digest of a few results whose last bits depend on the kernel
(an fp32 matmul's reduction order, a vectorized exp and softmax, a bf16 matmul). Two runs with the same
digest used the same arithmetic; `--expect-differs DIGEST` exits 1 when this run's digest equals DIGEST.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch

SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def results() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(257, 1031, generator=gen)
    b = torch.randn(1031, 263, generator=gen)
    x = torch.randn(64, 4099, generator=gen)
    return {
        "matmul_fp32": a @ b,
        "linear_fp32": torch.nn.functional.linear(a, b.t()),
        "matmul_bf16": (a.bfloat16() @ b.bfloat16()).float(),
        "softmax_fp32": torch.softmax(x, dim=-1),
        "exp_fp32": torch.exp(x),
        "sum_fp32": x.sum(dim=-1),
    }


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# Settings that put torch's CPU kernels on an older instruction set than the one it picks: ATen's vectorized
# ops (ATEN_CPU_CAPABILITY), oneDNN (bf16 matmuls, some convolutions) and MKL (fp32 matmuls, exp).
ANOTHER_ISA = {
    "AVX512": "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2",
    "AVX2": "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect-differs", metavar="DIGEST", help="exit 1 if this run's digest equals DIGEST")
    parser.add_argument("--another-isa", action="store_true",
                        help="print the settings of an instruction set other than this CPU's (empty: none known)")
    parser.add_argument("--digest", action="store_true", help="print only the digest")
    cli = parser.parse_args()
    if cli.another_isa:
        print(ANOTHER_ISA.get(torch.backends.cpu.get_cpu_capability(), ""))
        return
    torch.set_num_threads(1)  # the kernels' own reduction order, not the thread split
    tensors = results()
    if cli.digest:
        print(digest(tensors))
        return
    settings = " ".join(f"{k}={os.environ[k]}" for k in SETTINGS if k in os.environ) or "(none)"
    per_op = " ".join(f"{name}={digest({name: t})[:6]}" for name, t in sorted(tensors.items()))
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}; settings: {settings}")
    print(f"per op: {per_op}")
    ours = digest(tensors)
    print(f"digest: {ours}")
    if cli.expect_differs and cli.expect_differs == ours:
        raise SystemExit(f"cpu_kernels_probe: the digest {ours} equals the default run's: {settings} did not move "
                         "torch onto other kernels, so a second pass under it would test nothing new")


if __name__ == "__main__":
    main()
