"""GPU: Megatron logits vs transformers on CUDA, and the packed attention on CUDA.

    python parity.py --model DIR --out FILE

Writes a JSON of max abs differences:
  transformers/<impl>/<dtype>: the local spec (and Transformer Engine, if installed) vs transformers;
  packed_vs_alone/<dtype>: each sample's logits inside a THD pack vs the sample run alone (backend auto);
  auto_vs_local/<dtype>: the THD pack (auto) vs Megatron's DotProductAttention with the explicit mask.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def packs(seq_length: int = 128):
    """Four rows of several samples each (random token ids), as the data loader collates them."""
    import numpy as np

    from megatron_sft.data.batch import build_pack, collate

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(4):
        lengths = [int(n) for n in rng.integers(9, 40, 3)]
        rows.append(build_pack([(rng.integers(10, 400, n), np.ones(n, dtype=bool)) for n in lengths],
                               seq_length, pad_id=0))
    return collate(rows, with_attention_mask=True)


def packed_checks(model: Path, dtype_flags: list[str]) -> dict:
    import torch

    from megatron_sft.arguments import parse_args
    from megatron_sft.loading import build_and_load
    from megatron_sft.data.batch import join_rows
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.training.inputs import thd_params

    batch = packs()
    stream = {k: (v.cuda() if isinstance(v, torch.Tensor) and k in ("tokens", "position_ids") else v)
              for k, v in join_rows(batch).items()}
    cu = stream["cu_seqlens_padded"]
    base = ["--load", str(model), "--device", "cuda", "--transformer-impl", "local"] + dtype_flags
    auto = build_and_load(parse_args(base + ["--attention-backend", "auto"]))
    packed = forward_logits(auto, stream["tokens"], stream["position_ids"], None,
                            packed_seq_params=thd_params(cu, cu, int((cu[1:] - cu[:-1]).max())))
    alone = 0.0
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        single = forward_logits(auto, stream["tokens"][:, a:b])
        alone = max(alone, (packed[0, a:b] - single[0]).abs().max().item())
    local = build_and_load(parse_args(base + ["--attention-backend", "local"]))
    masked = forward_logits(local, batch["tokens"].cuda(), batch["position_ids"].cuda(),
                            batch["attention_mask"].cuda())
    return {"packed_vs_alone": alone, "auto_vs_local": (packed.reshape(masked.shape) - masked).abs().max().item()}


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_sft.arguments import parse_args
    from megatron_sft.loading import build_and_load
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.runtime.device import transformer_engine_available
    from megatron_sft.runtime.distributed import init_from_args

    cli = argparse.ArgumentParser()
    cli.add_argument("--model", type=Path, required=True)
    cli.add_argument("--out", type=Path, required=True)
    paths = cli.parse_args()
    tokens = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    reference = AutoModelForCausalLM.from_pretrained(paths.model, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        ref = reference(tokens).logits.float()
    results = {}
    impls = ["local"] + (["transformer_engine"] if transformer_engine_available() else [])
    for dtype, flags in (("fp32", []), ("bf16", ["--bf16"])):
        for impl in impls:
            args = parse_args(["--load", str(paths.model), "--device", "cuda", "--transformer-impl", impl] + flags)
            args = init_from_args(args)
            ours = forward_logits(build_and_load(args), tokens)
            results[f"transformers/{impl}/{dtype}"] = (ours[..., : ref.shape[-1]] - ref).abs().max().item()
        for name, diff in packed_checks(paths.model, flags).items():
            results[f"{name}/{dtype}"] = diff
    paths.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
