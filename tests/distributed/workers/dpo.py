"""DPO runs, several per launch (one launch per world size).

    torchrun --nproc_per_node=N dpo.py --model DIR --moe-model DIR --ref-model DIR --data FILE --valid-data FILE \
        --out DIR

Rank 0 writes OUT/dpo_ws<N>.json: per named run, every step's loss, grad norm and metrics; at world size 1 also the
first global batch (OUT/dpo_first_batch.pt) and the reference file's path, for the test to recompute with
transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

# name -> (world size, flags); GBS 4 packs everywhere, so every run sees the same global batch
LAYOUTS = {
    "tp1": (1, ""),
    "tp2": (2, "--tensor-model-parallel-size 2"),
    "tp2_sp": (2, "--tensor-model-parallel-size 2 --sequence-parallel"),
    "pp2": (2, "--pipeline-model-parallel-size 2"),
    "dp2": (2, "--use-distributed-optimizer"),
    "cp2": (2, "--context-parallel-size 2"),
    "full_logits": (1, "--lm-head-chunk-size 0"),  # the per-token loss path instead of the chunked head
    "validated": (2, "--tensor-model-parallel-size 2 --split 80,20,0 --eval-interval 3 --eval-iters 2"),
    "moe_tp1": (1, "MOE"),  # MOE: the hybrid MoE model (Mamba, attention, MoE layers) instead of the dense one
    "moe_ep2": (2, "MOE --expert-model-parallel-size 2"),
    # BLEND: --data-path 0.5 DATA 0.5 VALID_DATA against --ref-load's model (pair losses off ln 2): per-source figures
    "blend_tp1": (1, "BLEND"),
    "blend_pp2": (2, "BLEND --pipeline-model-parallel-size 2"),
    "blend_cp2": (2, "BLEND --context-parallel-size 2"),
    "blend_dp2": (2, "BLEND"),
}
TRL_CASES = {"sigmoid": "--dpo-beta 0.2", "ipo": "--dpo-loss-type ipo --dpo-beta 0.5",
             "hinge": "--dpo-loss-type hinge --dpo-beta 0.3", "rpo": "--dpo-beta 0.1 --dpo-sft-weight 0.7"}
FIGURES = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected")


def common(model: Path, data: Path, cache: Path) -> str:
    # CP pads each sample to 4 tokens in every run (as if CP were 2), so all runs see the same packs
    return (f"--load {model} --data-path {data} --data-cache-dir {cache} --device cpu --seq-length 128 "
            "--global-batch-size 4 --micro-batch-size 2 --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine "
            "--log-interval 1000 --split 100,0,0 --seed 7 --distributed-timeout-minutes 3 --dpo-beta 0.2")


CALLS = {"reference": 0}  # reference passes run (a rerun or resume must read the stored ones instead)


def count_reference_passes() -> None:
    from megatron_sft.training import dpo

    original = dpo.compute_reference_logps

    def counted(*args, **kwargs):
        CALLS["reference"] += 1
        return original(*args, **kwargs)

    dpo.compute_reference_logps = counted


def hf_named_grads(trainer) -> dict:
    """The last step's gradients (Megatron's fp32 main_grad) under Hugging Face's names (one process): put in the
    weights' place for the Hugging Face writer's layer exporter, then the weights put back."""
    import json

    import torch

    from megatron_sft.checkpointing.hf_tensors import LayerExporter
    from megatron_sft.models.builder import unwrap

    config = json.loads((Path(trainer.cfg.checkpoint.load) / "config.json").read_text())
    out = {}
    for chunk in trainer.model.chunks:
        model = unwrap(chunk)
        params = [p for p in model.parameters() if p.requires_grad]
        kept = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.copy_(p.main_grad)
            for piece in LayerExporter(model, config["architectures"][0], torch.float32, config["vocab_size"]).pieces():
                out.update({name: t.clone() for name, t in piece.tensors.items()})
            for p, weight in zip(params, kept):
                p.copy_(weight)
    return out


def dpo(flags: str, capture: list | None = None, evaluate_first: bool = False, grads_to: Path | None = None) -> dict:
    from megatron_sft.apps import parse
    from megatron_sft.startup import start
    from megatron_sft.training.dpo import _trainer_class, reference_file, with_reference

    cfg = with_reference(parse("dpo", shlex.split(flags)))
    before = CALLS["reference"]
    trainer = _trainer_class()(start(cfg, training=True))
    if capture is not None:
        original = trainer.next_global_batch
        trainer.next_global_batch = lambda: capture.append(original()) or capture[-1]
    before_training = trainer.evaluate(2) if evaluate_first else None  # the policy is still the reference here
    trainer.run()
    if grads_to is not None:
        import torch

        torch.save(hf_named_grads(trainer), grads_to)
    per_source = ("loss/", "supervised_tokens/", "samples/")
    return {"steps": [{k: v for k, v in r.items() if k in FIGURES or k.startswith(per_source)} for r in trainer.records],
            "validation": trainer.eval_history,
            "validation_before_training": before_training,
            "reference_passes": CALLS["reference"] - before,
            "reference_file": reference_file(trainer.data.cache_dir, cfg.dpo.ref_load), "cache": trainer.data.cache_dir}


def main() -> None:
    import torch

    from megatron_sft.config import DataConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--moe-model", type=Path, required=True)
    parser.add_argument("--ref-model", type=Path, required=True, help="another reference (--ref-load)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--valid-data", type=Path, required=True, help="held-out pairs (--valid-data-path)")
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()
    DataConfig.cp_multiple = property(lambda self: 4)
    count_reference_passes()
    ws = int(os.environ["WORLD_SIZE"])
    base = common(cli.model, cli.data, cli.out / "cache")
    results = {}
    for name, (size, flags) in LAYOUTS.items():
        if size == ws:
            capture = [] if name in ("tp1", "blend_tp1") else None
            run = base.replace(str(cli.model), str(cli.moe_model)) if flags.startswith("MOE") else base
            if flags.startswith("BLEND"):
                run = base.replace(f"--data-path {cli.data}", f"--data-path 0.5 {cli.data} 0.5 {cli.valid_data} "
                                   f"--ref-load {cli.ref_model}").replace("--seq-length 128", "--seq-length 384")
            flags = flags.removeprefix("MOE").removeprefix("BLEND")
            results[name] = dpo(f"{run} {flags} --train-iters 3", capture)
            if capture:
                suffix = "" if name == "tp1" else "_blend"
                torch.save(capture[0], cli.out / f"dpo_first_batch{suffix}.pt")
    if ws == 1:  # one step of each loss against another reference, for TRL's DPOTrainer on the same batch
        for case, flags in TRL_CASES.items():
            # no clipping: the step's gradients stay as computed in main_grad, for a tensor-by-tensor comparison
            results[f"trl_{case}"] = dpo(f"{base} --ref-load {cli.ref_model} --train-iters 1 --clip-grad 0 {flags}",
                                         grads_to=cli.out / f"grads_{case}.pt")
    if ws == 2:
        ckpt = cli.out / "resume_ckpt"
        results["straight6"] = dpo(f"{base} --train-iters 6")
        results["first3"] = dpo(f"{base} --train-iters 6 --exit-interval 3 --save {ckpt}")
        results["resumed3"] = dpo(f"{base.replace(str(cli.model), str(ckpt))} --train-iters 6")
        # the stored reference lost before a resume: computed again from the start model, not from the moved one
        ckpt = cli.out / "resume_lost_reference"
        results["first3_again"] = dpo(f"{base} --train-iters 6 --exit-interval 3 --save {ckpt}")
        reference = Path(results["first3_again"]["reference_file"])
        kept = reference.read_bytes()
        torch.distributed.barrier()
        if torch.distributed.get_rank() == 0:
            reference.unlink()
        torch.distributed.barrier()
        results["resumed3_recomputed"] = dpo(f"{base.replace(str(cli.model), str(ckpt))} --train-iters 6")
        results["resumed3_recomputed"]["same_file"] = reference.read_bytes() == kept
        per_split = base.replace(f"--data-path {cli.data}", f"--train-data-path {cli.data} --valid-data-path "
                                 f"{cli.valid_data}").replace(" --split 100,0,0", "")
        results["valid_file"] = dpo(f"{per_split} --tensor-model-parallel-size 2 --eval-interval 3 --eval-iters 2 "
                                    "--train-iters 3", evaluate_first=True)
        results["lora_tp2"] = dpo(f"{base} --tensor-model-parallel-size 2 --peft lora --lora-rank 8 --lora-alpha 16 "
                                  f"--train-iters 3 --save {cli.out / 'lora_ckpt'} --save-hf")
        results["other_ref"] = dpo(f"{base} --tensor-model-parallel-size 2 --ref-load {cli.ref_model} "
                                   "--train-iters 3")
    if torch.distributed.get_rank() == 0:
        (cli.out / f"dpo_ws{ws}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
