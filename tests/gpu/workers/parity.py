"""GPU: Megatron logits vs transformers on CUDA, local spec and (if installed) Transformer Engine.

    python parity.py --model DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_sft.arguments import parse_args
    from megatron_sft.checkpointing.convert import build_and_load
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
    for impl in impls:
        args = parse_args(["--load", str(paths.model), "--device", "cuda", "--transformer-impl", impl])
        init_from_args(args)
        ours = forward_logits(build_and_load(args), tokens)
        results[impl] = (ours[..., : ref.shape[-1]] - ref).abs().max().item()
    paths.out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
