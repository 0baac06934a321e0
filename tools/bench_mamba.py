"""The PyTorch Mamba-2 scan (megatron_sft/ops) against transformers' NemotronH mixer (`torch_forward`, its path
without the CUDA kernels), in one run: forward + backward time and peak memory of one mixer layer, CPU, fp32.

    python tools/bench_mamba.py [--lengths 2048 8192] [--rounds 2] [--threads N]

One layer of NemotronH's shape scaled to a CPU (hidden 1024, 16 heads of 64, 8 groups, state 128, chunk 128,
conv 4), the same weights both ways: transformers' `torch_forward` (in_proj, conv, scan, gated norm, out_proj),
and ours (the same in_proj, megatron_sft.ops.ssd.mamba_split_conv1d_scan_combined as Megatron-Core's MambaMixer
calls it, the gated norm, out_proj). Each (implementation, length) runs in its own process: peak memory is the
largest RSS above the process's RSS before the first forward (sampled every 2 ms), the time the best of --rounds.
Prints the outputs' agreement, speed and memory ratios, and each implementation's memory growth exponent in the
sequence length (log of the memory ratio over log of the length ratio; 1.0 is linear).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time

SHAPE = dict(hidden_size=1024, mamba_num_heads=16, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
             chunk_size=128, conv_kernel=4, hybrid_override_pattern="M", vocab_size=256, num_attention_heads=8,
             num_key_value_heads=8, head_dim=128, intermediate_size=1024, time_step_min=0.0)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def mixer():
    import torch
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

    torch.manual_seed(0)
    layer = NemotronHMamba2Mixer(NemotronHConfig(**SHAPE), layer_idx=0)
    with torch.no_grad():  # a trained layer's ranges: dt around 0.01-0.1, A in [-16, -1]
        layer.dt_bias.copy_(torch.log(torch.expm1(torch.rand(layer.num_heads) * 0.09 + 0.01)))
        layer.A_log.copy_(torch.log(torch.rand(layer.num_heads) * 15 + 1))
    return layer


def ours(layer, hidden):
    import torch

    from megatron_sft.ops.gated_norm import rmsnorm_fn
    from megatron_sft.ops.ssd import mamba_split_conv1d_scan_combined

    y = mamba_split_conv1d_scan_combined(
        layer.in_proj(hidden), layer.conv1d.weight[:, 0], layer.conv1d.bias, layer.dt_bias, -torch.exp(layer.A_log),
        layer.D, layer.chunk_size, headdim=layer.head_dim, ngroups=layer.n_groups)
    y = rmsnorm_fn(y, layer.norm.weight, eps=layer.norm.variance_epsilon, group_size=layer.norm.group_size)
    return layer.out_proj(y)


def one(impl: str, length: int, rounds: int) -> dict:
    """In this process: best fwd+bwd time of `impl` at `length`, and its peak RSS growth."""
    import torch

    layer = mixer()
    hidden = torch.randn(1, length, SHAPE["hidden_size"], requires_grad=True)
    run = (lambda: ours(layer, hidden)) if impl == "ours" else (lambda: layer.torch_forward(hidden))
    start, peak, stop = _rss(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = run()
        out.float().pow(2).mean().backward()
        best = min(best, time.perf_counter() - t0)
        layer.zero_grad(set_to_none=True)
        hidden.grad = None
        del out
    stop.set()
    thread.join()
    return {"seconds": best, "peak": max(peak[0], _rss()) - start}


def agreement(length: int = 512) -> tuple[float, float]:
    """How far each fp32 path is from the exact values (ours in fp64, which equals the token-by-token recurrence to
    rounding: tests/unit/test_ssm_ops.py), relative to the largest output: (ours, transformers)."""
    import torch

    layer = mixer()
    hidden = torch.randn(1, length, SHAPE["hidden_size"])
    with torch.no_grad():
        exact = ours(mixer().double(), hidden.double())
        scale = exact.abs().max()
        return tuple(((out.double() - exact).abs().max() / scale).item()
                     for out in (ours(layer, hidden), layer.torch_forward(hidden)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "LENGTH"), help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.one:
        print(json.dumps(one(cli.one[0], int(cli.one[1]), cli.rounds)))
        return
    print(f"one NemotronH mixer layer, CPU fp32, {SHAPE['mamba_num_heads']} heads x {SHAPE['mamba_head_dim']}, "
          f"{SHAPE['n_groups']} groups, state {SHAPE['ssm_state_size']}, chunk {SHAPE['chunk_size']}; "
          f"forward + backward, best of {cli.rounds}")
    mine, theirs = agreement()
    print(f"fp32 outputs vs the exact ones (512 tokens): ours {mine:.1e}, transformers {theirs:.1e} of the largest")
    results = {}
    for length in cli.lengths:
        for impl in ("transformers", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--one", impl, str(length), "--rounds", str(cli.rounds)],
                                  capture_output=True, text=True, check=True)
            results[impl, length] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'length':>7} {'transformers s':>15} {'ours s':>8} {'speed':>7} {'transformers GB':>16} {'ours GB':>8} "
          f"{'memory':>7}")
    for length in cli.lengths:
        hf, us = results["transformers", length], results["ours", length]
        print(f"{length:7d} {hf['seconds']:15.2f} {us['seconds']:8.2f} {hf['seconds'] / us['seconds']:6.2f}x "
              f"{hf['peak'] / 1e9:16.2f} {us['peak'] / 1e9:8.2f} {us['peak'] / hf['peak']:6.2f}x")
    if len(cli.lengths) > 1:
        short, long = min(cli.lengths), max(cli.lengths)
        for impl in ("transformers", "ours"):
            growth = math.log(results[impl, long]["peak"] / results[impl, short]["peak"]) / math.log(long / short)
            print(f"memory growth exponent in the sequence length, {impl}: {growth:.2f}")


if __name__ == "__main__":
    main()
