"""Benchmark generation with the KV cache against without it, in one run (CPU or GPU).

Qwen3-0.6B's exact shape with random weights made locally (no initialisation pass: the parameters
are filled directly), a 512-token random prompt, 128 new tokens, greedy, no stop token:
  with cache     prefill once, then one length-1 step per token (Megatron-Core StaticInferenceContext)
  without cache  the whole sequence again for every token
Goal: tokens/s with the cache >= 3x tokens/s without it.

On CPU a no-cache step at this shape is a full 512+ token forward (~15 s on 2 cores), so by default
only the first --no-cache-tokens tokens are timed without the cache. They are its cheapest tokens
(each later one re-reads a longer sequence), so the printed ratio is a lower bound; pass
--no-cache-tokens 128 for the full measurement.

    python tools/bench_generate.py [--prompt-tokens 512] [--new-tokens 128] [--no-cache-tokens 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

QWEN3_0_6B = json.loads(
    (Path(__file__).resolve().parents[1] / "tests" / "data" / "hf_model_configs.json").read_text()
)["Qwen/Qwen3-0.6B"]


def megatron_flags(cfg: dict, seq_length: int) -> list[str]:
    """Megatron-LM flags describing the HF config (Qwen3: GQA, qk-norm, SwiGLU, RoPE, tied embeddings)."""
    return [
        "--num-layers", str(cfg["num_hidden_layers"]), "--hidden-size", str(cfg["hidden_size"]),
        "--ffn-hidden-size", str(cfg["intermediate_size"]), "--num-attention-heads", str(cfg["num_attention_heads"]),
        "--group-query-attention", "--num-query-groups", str(cfg["num_key_value_heads"]),
        "--kv-channels", str(cfg["head_dim"]), "--position-embedding-type", "rope",
        "--rotary-base", str(int(cfg["rope_theta"])), "--normalization", "RMSNorm",
        "--norm-epsilon", str(cfg["rms_norm_eps"]), "--swiglu", "--qk-layernorm", "--disable-bias-linear",
        "--max-position-embeddings", str(cfg["max_position_embeddings"]), "--seq-length", str(seq_length),
        "--attention-dropout", "0", "--hidden-dropout", "0",
    ]


def build_model(seq_length: int, device: str) -> list:
    import torch

    from megatron_sft.arguments import parse_args
    from megatron_sft.to_mcore import transformer_config
    from megatron_sft.models.builder import build_model_chunks
    from megatron_sft.startup import start

    args = parse_args(megatron_flags(QWEN3_0_6B, seq_length) + ["--device", device], world_size=1)
    args = start(args)
    config = transformer_config(args)
    config.perform_initialization = False  # filled below, much faster than Megatron's init pass
    chunks = build_model_chunks(args, config, QWEN3_0_6B["vocab_size"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in chunks[0].parameters():
            if param.dim() == 1:
                param.fill_(1.0)  # norm weights
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    for chunk in chunks:
        chunk.eval()
    return chunks


def timed_generate(chunks, prompt: list[int], new_tokens: int, use_cache: bool, device: str) -> tuple[list, float]:
    import torch

    from megatron_sft.inference.generate import GenerationOptions, generate

    opts = GenerationOptions(max_new_tokens=new_tokens, vocab_size=QWEN3_0_6B["vocab_size"], stop_ids=(),
                             use_cache=use_cache, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = generate(chunks, [prompt], opts)[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return result.tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--no-cache-tokens", type=int, default=8, help="tokens timed without the cache")
    parser.add_argument("--device", default="auto")
    cli = parser.parse_args()
    with socket.socket() as s:  # a single process still opens a process group: avoid a busy default port
        s.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(s.getsockname()[1]))
    import torch

    device = "cuda" if cli.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    chunks = build_model(cli.prompt_tokens + cli.new_tokens, device)
    prompt = torch.randint(0, QWEN3_0_6B["vocab_size"], (cli.prompt_tokens,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    cached, t_cached = timed_generate(chunks, prompt, cli.new_tokens, True, device)
    n_plain = min(cli.no_cache_tokens, cli.new_tokens)
    plain, t_plain = timed_generate(chunks, prompt, n_plain, False, device)
    rate_cached, rate_plain = len(cached) / t_cached, len(plain) / t_plain
    print(f"model: Qwen3-0.6B shape, random weights, fp32, {device}, {torch.get_num_threads()} threads")
    print(f"prompt {cli.prompt_tokens} tokens, greedy")
    print(f"with KV cache:    {len(cached)} new tokens in {t_cached:.1f} s = {rate_cached:.2f} tokens/s "
          "(incl. prefill)")
    print(f"without KV cache: {len(plain)} new tokens in {t_plain:.1f} s = {rate_plain:.3f} tokens/s"
          + ("" if n_plain == cli.new_tokens else f" (first {n_plain} of {cli.new_tokens}: its cheapest)"))
    print(f"same first {n_plain} tokens: {cached[:n_plain] == plain}")
    bound = "" if n_plain == cli.new_tokens else " (lower bound)"
    print(f"speed-up: {rate_cached / rate_plain:.1f}x{bound}  (goal >= 3x)")
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":
    main()
