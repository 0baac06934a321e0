"""`sft(...)`: fine-tune from Python, with the keyword names Training Hub users know.

The call builds the Megatron-LM flags `examples/finetune.py` takes and trains in a child process
(`python` for one process, `torchrun` for more), so the caller's interpreter is never modified (the
CPU mode patches torch.cuda process-wide). The child's output is streamed as it comes; the result
names the checkpoint and the final figures; a bad input raises `SFTError` with the one-line message
the command line would print.

Batch rules:
* `max_seq_len` caps each conversation (`--max-sample-length`; longer ones are truncated, or dropped
  with `drop_long_samples=True`).
* `max_tokens_per_gpu` is the packed sequence length (`--seq-length`, at least `max_seq_len`) at
  micro-batch 1: the tokens one GPU holds per micro-batch. Default: `max_seq_len`.
* `effective_batch_size` counts conversations per optimizer step. The global batch in packed
  sequences is round(effective_batch_size / mean conversations per pack of the prepared training
  split), at least the data-parallel size and a multiple of it; the data is prepared here first
  (the training run reuses that cache) and the resulting conversations per step are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from megatron_sft.checkpointing.names import METRICS, TRAINING_LOG
from megatron_sft.errors import UserError


class SFTError(UserError):
    """The run refused its input (the message is the command line's `error:` lines) or failed."""


@dataclass
class SFTResult:
    checkpoint: str  # the run's save folder (Megatron layout; latest_checkpointed_iteration.txt names the last)
    iterations: int
    final_loss: float | None
    metrics: dict = field(default_factory=dict)  # the last training record of metrics.jsonl
    validation: dict | None = None  # the last validation record, if any
    log_file: str = ""
    hf_path: str | None = None  # with save_hf: the Hugging Face directory of the last checkpoint (iter_N/hf)


def sft(
    model_path: str,
    data_path: str | list[str],
    ckpt_output_dir: str,
    *,
    num_epochs: int = 1,
    effective_batch_size: int | None = None,
    learning_rate: float = 2e-5,
    max_seq_len: int = 2048,
    max_tokens_per_gpu: int | None = None,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    seed: int = 42,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    context_parallel_size: int = 1,
    expert_parallel_size: int = 1,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    valid_data_path: str | list[str] | None = None,
    drop_long_samples: bool = False,
    data_cache_dir: str | None = None,
    keep_last: int | None = None,
    save_hf: bool | str = False,
    resume: bool = True,
    teacher_path: str | None = None,
    kd_config: str | None = None,
    teacher_model_config: str | None = None,
    loss_normalization: str = "token",
    loss_turns: str = "all",
    neftune_noise_alpha: float | None = None,
    extra_args: list[str] | None = None,
    quiet: bool = False,
) -> SFTResult:
    """Fine-tune `model_path` (a Hugging Face directory or a Megatron checkpoint) on `data_path`.

    Returns where the checkpoint is and the last logged figures; raises SFTError with the one-line
    message for bad input. When `ckpt_output_dir` already holds a training checkpoint, the call continues
    that run (`resume=False`: start over from `model_path`), so calling it again after it finished trains
    and writes nothing. `keep_last` keeps only the newest N checkpoints. `save_hf=True` writes a Hugging Face
    directory beside every checkpoint (`"final"`: the last only) and the result's `hf_path` names the last one. `extra_args` are more Megatron-LM
    flags, appended last (e.g. ["--bf16", "--save-interval", "500"]).

    `teacher_path` distills from that teacher (a Hugging Face directory, .gguf or Megatron checkpoint sharing the
    tokenizer): the loss becomes KL(teacher || student) on the assistant tokens (docs/distillation.md);
    `kd_config` is Megatron-LM's distillation YAML, `teacher_model_config` the teacher's shape where it does not
    record it. A quantized `model_path` with its unquantized source as teacher is QAD.

    `loss_normalization="sample"`: each conversation's mean token loss, then the mean over conversations (default
    "token": the mean over supervised tokens); `loss_turns="last"`: train on each conversation's last assistant turn
    only; `neftune_noise_alpha`: NEFTune's noise on the input embeddings (TRL's keyword). docs/data.md.
    """
    return _train("finetune", locals())


def _train(app: str, o: dict) -> SFTResult:
    """Run `app` (finetune, dpo) in a child process with the flags of the keywords `o` (sft's)."""
    max_seq_len, max_tokens_per_gpu = o["max_seq_len"], o["max_tokens_per_gpu"]
    tensor_parallel_size, pipeline_parallel_size = o["tensor_parallel_size"], o["pipeline_parallel_size"]
    context_parallel_size, nproc_per_node, nnodes = o["context_parallel_size"], o["nproc_per_node"], o["nnodes"]
    seq_length = max_tokens_per_gpu or max_seq_len
    if seq_length < max_seq_len:
        raise SFTError(f"max_tokens_per_gpu {max_tokens_per_gpu} is below max_seq_len {max_seq_len}: a pack must "
                       f"hold the longest conversation; use max_tokens_per_gpu >= {max_seq_len}")
    layout = tensor_parallel_size * pipeline_parallel_size * context_parallel_size
    world = nproc_per_node * nnodes
    if world % layout:
        raise SFTError(f"nproc_per_node x nnodes = {world} processes do not split into tensor x pipeline x context "
                       f"parallel = {layout}; use a multiple of {layout}")
    flags = _flags(o, seq_length)
    if o["effective_batch_size"] is not None:
        flags += ["--global-batch-size", str(_global_batch(app, flags, o["effective_batch_size"], world // layout,
                                                           world))]
    command = _launcher(app, nproc_per_node, nnodes, o["node_rank"], o["master_addr"], o["master_port"]) + flags
    _run(command, o["quiet"])
    return _result(Path(o["ckpt_output_dir"]), bool(o["save_hf"]))


def _paths(value) -> list[str]:
    return [str(value)] if isinstance(value, (str, os.PathLike)) else [str(v) for v in value]


def _flags(o: dict, seq_length: int) -> list[str]:
    """The Megatron-LM flags of one call (see the module docstring for the batch rules)."""
    data = (["--train-data-path", *_paths(o["data_path"]), "--valid-data-path", *_paths(o["valid_data_path"])]
            if o["valid_data_path"] else ["--data-path", *_paths(o["data_path"]), "--split", "100,0,0"])
    from megatron_sft.checkpointing.layout import is_megatron_checkpoint

    resume = o["resume"] and _holds_training_checkpoint(o["ckpt_output_dir"])
    start = o["ckpt_output_dir"] if resume else o["model_path"]
    # a new run from another run's Megatron checkpoint takes its weights, not its optimizer or data position
    weights_only = ["--finetune"] if not resume and is_megatron_checkpoint(start) else []
    flags = [
        "--load", str(start), *weights_only, "--save", str(o["ckpt_output_dir"]), *data,
        "--train-epochs", str(o["num_epochs"]), "--lr", str(o["learning_rate"]), "--min-lr", "0",
        "--lr-decay-style", "cosine", "--lr-warmup-iters", str(o["warmup_steps"]),
        "--weight-decay", str(o["weight_decay"]), "--seed", str(o["seed"]),
        "--seq-length", str(seq_length), "--max-sample-length", str(o["max_seq_len"]), "--micro-batch-size", "1",
        "--tensor-model-parallel-size", str(o["tensor_parallel_size"]),
        "--pipeline-model-parallel-size", str(o["pipeline_parallel_size"]),
        "--context-parallel-size", str(o["context_parallel_size"]),
        "--expert-model-parallel-size", str(o["expert_parallel_size"]),
    ]
    if o["drop_long_samples"]:
        flags.append("--drop-long-samples")
    if o["data_cache_dir"]:
        flags += ["--data-cache-dir", str(o["data_cache_dir"])]
    if o["keep_last"]:
        flags += ["--keep-last", str(o["keep_last"])]
    if o["save_hf"]:
        flags += ["--save-hf"] + (["final"] if o["save_hf"] == "final" else [])
    if o["valid_data_path"]:
        flags += ["--eval-iters", "1000000000"]  # each validation reads the whole split once
    for key, flag in (("teacher_path", "--export-kd-teacher-load"), ("kd_config", "--export-kd-cfg"),
                      ("teacher_model_config", "--export-kd-teacher-model-config"),
                      ("neftune_noise_alpha", "--neftune-noise-alpha")):
        if o.get(key):
            flags += [flag, str(o[key])]
    for key, flag, default in (("loss_normalization", "--loss-normalization", "token"),
                               ("loss_turns", "--loss-turns", "all")):
        if o.get(key, default) != default:
            flags += [flag, str(o[key])]
    return flags + list(o["extra_args"] or [])


def _holds_training_checkpoint(folder) -> bool:
    """Damaged checkpoint state in the folder raises SFTError (the loader's line): never a silent fresh start."""
    from megatron_sft.checkpointing.layout import resumable_checkpoint

    try:
        return resumable_checkpoint(folder) is not None
    except UserError as err:
        raise SFTError(f"{err} (resume=False starts over from model_path)") from None


def _global_batch(app: str, flags: list[str], conversations: int, dp: int, world: int) -> int:
    """Packs per step for `conversations` (DPO: pairs) per step, from the prepared training split (built here)."""
    from megatron_sft.apps import parse
    from megatron_sft.data.dataset import prepare_training_split
    from megatron_sft.loading import load_run_tokenizer

    from megatron_sft.errors import UserError

    try:  # bad flags or data surface here, before any launch: the same one-line error as the run's own
        args = parse(app, flags, world_size=world)
        split = prepare_training_split(args.data, load_run_tokenizer(args)).meta["splits"]["train"]
    except SFTError:
        raise
    except UserError as err:
        raise SFTError(str(err)) from None
    per_pack = split["conversations"] / max(1, split["packs"])
    packs = max(dp, round(conversations / per_pack / dp) * dp)
    unit = "pairs" if app == "dpo" else "conversations"
    print(f"{'sft' if app == 'finetune' else app}: effective_batch_size {conversations} {unit}, {per_pack:.2f} {unit} "
          f"per packed sequence -> global batch {packs} packed sequences (~{packs * per_pack:.1f} {unit} per step)",
          flush=True)
    return packs


def _launcher(app: str, nproc: int, nnodes: int, node_rank: int, addr: str, port: int | None) -> list[str]:
    from megatron_sft.launch.layout import torchrun_args

    entry = ["-m", "megatron_sft.run_finetune"] if app == "finetune" else ["-m", "megatron_sft", app]
    if nproc * nnodes == 1:
        return [sys.executable, *entry]
    return [sys.executable, "-m", "megatron_sft.launch.torchrun", *torchrun_args(nproc, nnodes, node_rank, addr, port),
            *entry]


def _run(command: list[str], quiet: bool) -> None:
    """Stream the child's output; its `error:` lines become an SFTError, any other failure its tail."""
    errors, tail = [], []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if not quiet:
                print(line, end="", flush=True)
            if line.startswith("error: "):
                errors.append(line[len("error: "):].rstrip())
            tail = (tail + [line])[-40:]
    if errors:
        raise SFTError("\n".join(errors))
    if proc.returncode != 0:
        raise SFTError(f"training exited with code {proc.returncode}; its last lines:\n{''.join(tail)}")


def _result(save: Path, save_hf: bool = False) -> SFTResult:
    records = []
    if (save / METRICS).is_file():
        records = [json.loads(line) for line in (save / METRICS).read_text().splitlines() if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "validation"]
    last = train[-1] if train else {}
    hf = None
    if save_hf:
        from megatron_sft.checkpointing.layout import CheckpointDir, latest_checkpoint_dir

        hf = CheckpointDir(latest_checkpoint_dir(save)[0]).hf
        if not hf.is_dir():
            raise SFTError(f"save_hf: the run ended without writing {hf}; see {save / TRAINING_LOG}")
    return SFTResult(checkpoint=str(save), iterations=int(last.get("iteration", 0)), final_loss=last.get("loss"),
                     metrics=last, validation=valid[-1] if valid else None, log_file=str(save / TRAINING_LOG),
                     hf_path=None if hf is None else str(hf))


def lora_sft(
    model_path: str,
    data_path: str | list[str],
    ckpt_output_dir: str,
    *,
    lora_r: int | None = None,
    lora_alpha: float | None = None,
    lora_dropout: float | None = None,
    target_modules: list[str] | None = None,
    learning_rate: float = 1e-4,
    **sft_kwargs,
) -> SFTResult:
    """`sft(...)` training LoRA adapters on the frozen model (Training Hub's `lora_sft` keywords).

    `lora_r`, `lora_alpha`, `lora_dropout`: the adapters' rank, scale and dropout (default 16, 32 and 0.0: the
    --lora-rank / --lora-alpha / --lora-dropout defaults; a resumed LoRA run keeps its own).

    `target_modules`: Megatron names (linear_qkv, linear_proj, linear_fc1, linear_fc2) or Hugging Face ones
    (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj); default all. The checkpoint holds the
    adapters; `tools/convert.py --load <ckpt_output_dir> --save DIR` exports them as a PEFT adapter.
    """
    from megatron_sft.arguments.peft import HF_TO_MEGATRON, LORA_TARGETS

    targets = []
    for name in target_modules or LORA_TARGETS:
        megatron = name if name in LORA_TARGETS else HF_TO_MEGATRON.get(name)
        if megatron is None:
            raise SFTError(f"target_modules: {name!r} is not an attention or MLP projection; use any of "
                           f"{', '.join(LORA_TARGETS)} (or their Hugging Face names)")
        targets += [] if megatron in targets else [megatron]
    sizes = {"--lora-rank": lora_r, "--lora-alpha": lora_alpha, "--lora-dropout": lora_dropout}
    lora = ["--peft", "lora", *(w for flag, v in sizes.items() if v is not None for w in (flag, str(v))),
            "--lora-target-modules", *targets]
    extra = list(sft_kwargs.pop("extra_args", None) or [])
    return sft(model_path, data_path, ckpt_output_dir, learning_rate=learning_rate, extra_args=lora + extra,
               **sft_kwargs)


def dpo(
    model_path: str,
    data_path: str | list[str],
    ckpt_output_dir: str,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    rpo_alpha: float | None = None,
    learning_rate: float = 5e-7,
    **sft_kwargs,
) -> SFTResult:
    """Preference training (DPO) of `model_path` (typically sft()'s checkpoint) on preference pairs in `data_path`
    (docs/dpo.md: TRL's prompt/chosen/rejected, implicit-prompt conversations, NeMo-RL's ranked completions); the
    keywords of sft() otherwise (effective_batch_size counts pairs). `beta`, `loss_type` (sigmoid, ipo, hinge),
    `label_smoothing` and `rpo_alpha` (the weight of the chosen responses' NLL) are TRL's names."""
    if sft_kwargs.get("teacher_path"):
        raise SFTError("dpo(teacher_path=...): distillation is sft()'s; train DPO on the distilled model instead")
    flags = ["--dpo-beta", str(beta), "--dpo-loss-type", loss_type, "--dpo-label-smoothing", str(label_smoothing)]
    if rpo_alpha is not None:
        flags += ["--dpo-sft-weight", str(rpo_alpha)]
    o = _sft_keywords(model_path, data_path, ckpt_output_dir, learning_rate=learning_rate, **sft_kwargs)
    o["extra_args"] = flags + list(o["extra_args"] or [])
    return _train("dpo", o)


def lora_dpo(model_path: str, data_path: str | list[str], ckpt_output_dir: str, *, lora_r: int | None = None,
             lora_alpha: float | None = None, learning_rate: float = 5e-6, **dpo_kwargs) -> SFTResult:
    """dpo() training LoRA adapters on the frozen model; the reference is that model (the adapters start at zero)."""
    sizes = {"--lora-rank": lora_r, "--lora-alpha": lora_alpha}
    lora = ["--peft", "lora", *(w for flag, v in sizes.items() if v is not None for w in (flag, str(v)))]
    extra = list(dpo_kwargs.pop("extra_args", None) or [])
    return dpo(model_path, data_path, ckpt_output_dir, learning_rate=learning_rate, extra_args=lora + extra,
               **dpo_kwargs)


def _sft_keywords(model_path, data_path, ckpt_output_dir, **kwargs) -> dict:
    """sft()'s keywords with their defaults, as its body sees them (locals())."""
    import inspect

    bound = inspect.signature(sft).bind(model_path, data_path, ckpt_output_dir, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
