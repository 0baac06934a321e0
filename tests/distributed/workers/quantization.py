"""Quantization runs, one launch per world size (the TP=1 launch first: the TP=2 one trains from its output).

    torchrun --nproc_per_node=1 quantization.py --models DIR --data DIR --out DIR
    torchrun --nproc_per_node=2 quantization.py --models DIR --data DIR --out DIR

Both: quantize.py's function on each tiny family x format at TP = world size, then the saved checkpoint
reloaded and its logits of OUT/tokens.pt written to OUT/logits/<family>_<format>_tp<N>.pt; QAT (3 steps)
from the TP=1 quantized checkpoints, per-step loss and grad norm in OUT/qat_tp<N>.json.
World size 1 also: convert.py's export of each of EXPORT_FORMATS (OUT/export_<family>_<format>) and the Megatron
model's own fake-quantized weights under Hugging Face names (OUT/fake_quant_<family>_<format>.pt).
World size 2 also: the TP=1 checkpoints' logits loaded at TP=2 (<name>_tp1_at_tp2.pt) and each rank's quantizer
values as loaded (<name>_tp1_at_tp2.rank<R>.values.pt), 10 QAT steps straight vs
5 + resume 5 (OUT/qat_resume.json).
DATA holds calib.jsonl (texts) and chat.jsonl (conversations).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

FAMILIES = ("qwen3", "llama3")
# INT4 blocks without AWQ's search too: the block quantization itself, compared exactly
FORMATS = ("fp8", "int8_sq", "int4_awq", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG")
QAT_FORMATS = ("fp8", "int8_sq")
# export.sh's formats, each through its exporter (FP8: modelopt's Megatron one; the others its Hugging Face one)
EXPORT_FORMATS = (("qwen3", "fp8"), ("qwen3", "int8_sq"), ("qwen3", "int4_awq"), ("llama3", "int4_awq"),
                  ("qwen3", "w4a8_awq"), ("qwen3", "int8"), ("qwen3", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"),
                  ("qwen3", "int4_awq_partial"))
# quantize.py's flags of an export-only variant: q/k/v and the last layer kept unquantized (4 layers: 12 of 28 left)
EXPORT_VARIANTS = {"int4_awq_partial": "int4_awq --disable-qkv-quant --num-last-layers-to-skip-quant 1"}


def with_runtime(flags: str):
    from megatron_sft.arguments import parse_args
    from megatron_sft.arguments.quantize import add_quantize_args
    from megatron_sft.runtime.distributed import init_from_args

    return init_from_args(parse_args(shlex.split(f"{flags} --device cpu --distributed-timeout-minutes 3"),
                                     extra=[add_quantize_args]))


def rank0() -> bool:
    return int(os.environ["RANK"]) == 0


def quantize_all(cli, tp: int) -> None:
    import torch

    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.loading import build_and_load
    from megatron_sft.quantization.ptq import quantize

    tokens = torch.load(cli.out / "tokens.pt")
    (cli.out / "logits").mkdir(exist_ok=True)
    for family in FAMILIES:
        for fmt in FORMATS:
            name = f"{family}_{fmt}_tp{tp}"
            quantize(with_runtime(f"--load {cli.models / family} --save {cli.out / 'quant' / name} "
                                  f"--export-quant-cfg {fmt} --calib-data-path {cli.data / 'calib.jsonl'} "
                                  f"--calib-size 4 --seq-length 64 --tensor-model-parallel-size {tp}"))
            chunks = build_and_load(with_runtime(f"--load {cli.out / 'quant' / name} "
                                                 f"--tensor-model-parallel-size {tp}"))
            logits = forward_logits(chunks, tokens)
            if rank0():
                torch.save(logits, cli.out / "logits" / f"{name}.pt")
                (cli.out / "logits" / f"{name}.quantizers.json").write_text(json.dumps(enabled_quantizers(chunks)))
            if tp == 2:  # the TP=1 launch's checkpoint of the same model, resharded
                chunks = build_and_load(with_runtime(f"--load {cli.out / 'quant' / f'{family}_{fmt}_tp1'} "
                                                     f"--tensor-model-parallel-size {tp}"))
                logits = forward_logits(chunks, tokens)
                torch.save(local_quantizer_values(chunks),
                           cli.out / "logits" / f"{family}_{fmt}_tp1_at_tp2.rank{os.environ['RANK']}.values.pt")
                if rank0():
                    torch.save(logits, cli.out / "logits" / f"{family}_{fmt}_tp1_at_tp2.pt")


def enabled_quantizers(chunks) -> list[str]:
    """The quantizers the loaded model applies (an enabled quantizer with a value, or a disabled one, is what
    the logits test needs to know; the checkpoint's values alone do not say)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    from megatron_sft.models.builder import unwrap

    return sorted(n for n, m in unwrap(chunks[0]).named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled)


def local_quantizer_values(chunks) -> dict:
    """This rank's quantizer values (amax, pre_quant_scale) as the loaded model holds them."""
    from megatron_sft.models.builder import unwrap

    return {n: b.detach().clone() for n, b in unwrap(chunks[0]).named_buffers() if "_quantizer._" in n}


def train_flags(cli, load: Path, tp: int) -> str:
    return (f"--load {load} --data-path {cli.data / 'chat.jsonl'} --data-cache-dir {cli.out / 'cache'} --device cpu "
            f"--seq-length 64 --global-batch-size 4 --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine "
            f"--log-interval 1000 --split 100,0,0 --seed 7 --distributed-timeout-minutes 3 "
            f"--tensor-model-parallel-size {tp}")


def train(flags: str) -> list[list[float]]:
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    trainer = start_training(parse_args(shlex.split(flags)))
    trainer.run()
    return [[r["loss"], r["grad_norm"]] for r in trainer.records]


def qat_runs(cli, tp: int) -> None:
    results = {}
    for fmt in QAT_FORMATS:
        src = cli.out / "quant" / f"qwen3_{fmt}_tp1"
        save = cli.out / "qat" / f"{fmt}_tp{tp}"
        results[fmt] = train(f"{train_flags(cli, src, tp)} --finetune --train-iters 3 --save {save}")
    if rank0():
        (cli.out / f"qat_tp{tp}.json").write_text(json.dumps(results))


def resume_runs(cli, tp: int) -> None:
    src = cli.out / "quant" / "qwen3_fp8_tp1"
    ckpt = cli.out / "qat" / "resume"
    results = {"straight": train(f"{train_flags(cli, src, tp)} --finetune --train-iters 10")}
    results["first5"] = train(f"{train_flags(cli, src, tp)} --finetune --train-iters 10 --exit-interval 5 "
                              f"--save {ckpt}")
    results["resumed5"] = train(f"{train_flags(cli, ckpt, tp)} --train-iters 10 --save {ckpt}")
    if rank0():
        (cli.out / "qat_resume.json").write_text(json.dumps(results))


def export_formats(cli) -> None:
    """export.sh's step (convert.py's export) of each EXPORT_FORMATS checkpoint, to OUT/export_<family>_<fmt>,
    and the Megatron model's own values to check it against, OUT/fake_quant_<family>_<fmt>.pt: under Hugging Face
    names (--save-hf's tensor export) the weights replaced by weight_quantizer(weight), once from the weights as
    saved ("as_saved") and once from them rounded to bf16, the dtype the INT4/INT8 export writes ("bf16"); and
    by Megatron name every pre_quant_scale ("pqs") and input range ("input_amax")."""
    import torch

    from megatron_sft.checkpointing.hf_tensors import LayerExporter
    from megatron_sft.conversion import convert
    from megatron_sft.loading import build_and_load
    from megatron_sft.models.builder import unwrap
    from megatron_sft.quantization.ptq import quantize

    for family, fmt in EXPORT_FORMATS:
        ckpt = cli.out / "quant" / f"{family}_{fmt}_tp1"
        if not ckpt.exists():  # a format only the export is tested with
            spec = EXPORT_VARIANTS.get(fmt, fmt)
            quantize(with_runtime(f"--load {cli.models / family} --save {ckpt} --export-quant-cfg {spec} "
                                  f"--calib-data-path {cli.data / 'calib.jsonl'} --calib-size 4 --seq-length 64"))
        convert(with_runtime(f"--load {ckpt} --save {cli.out / f'export_{family}_{fmt}'}"))
        cfg = with_runtime(f"--load {ckpt}")
        model = unwrap(build_and_load(cfg)[0])
        buffers = dict(model.named_buffers())
        result = {"pqs": {k: v.clone() for k, v in buffers.items() if k.endswith("_pre_quant_scale")},
                  "input_amax": {k: v.clone() for k, v in buffers.items() if k.endswith("input_quantizer._amax")}}
        # (a tied output layer has a quantizer but no weight of its own)
        linears = [m for m in model.modules() if hasattr(m, "weight_quantizer") and m.weight is not None]
        plain = [m.weight.detach().clone() for m in linears]
        for key, weights in (("as_saved", plain), ("bf16", [w.bfloat16().to(w.dtype) for w in plain])):
            with torch.no_grad():
                for module, weight in zip(linears, weights):
                    module.weight.copy_(module.weight_quantizer(weight))
            exporter = LayerExporter(model, cfg.model.hf_architecture, torch.float32, cfg.model.padded_vocab_size)
            # copies: at TP=1 the export hands out the parameters themselves, which the next pass overwrites
            result[key] = {k: v.clone() for piece in exporter.pieces() for k, v in piece.tensors.items()}
        torch.save(result, cli.out / f"fake_quant_{family}_{fmt}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--models", "--data", "--out"):
        parser.add_argument(flag, type=Path, required=True)
    cli = parser.parse_args()
    tp = int(os.environ["WORLD_SIZE"])
    quantize_all(cli, tp)
    qat_runs(cli, tp)
    if tp == 1:
        export_formats(cli)
    else:
        resume_runs(cli, tp)
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
