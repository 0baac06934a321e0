"""One plan per example script: its variables -> the entry script's flags. The docstrings are the scripts' --help."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from megatron_sft.config import field_default
from megatron_sft.checkpointing.gguf import is_gguf
from megatron_sft.checkpointing.layout import (
    CheckpointDir,
    latest_checkpoint_dir,
    resumable_checkpoint,
)
from megatron_sft.checkpointing.names import RUN_ARGS, TRACKER
from megatron_sft.errors import UserError
from megatron_sft.launch.conf import ModelConf
from megatron_sft.launch.layout import Layout, launcher, read_layout
from megatron_sft.launch.settings import (
    RUN_LENGTH_SETTERS,
    LaunchError,
    Settings,
    drop_flags,
    drop_run_length,
    has_flag,
    words,
)

DEFAULT_DATASET = "Magpie-Align/Magpie-Llama-3.1-Pro-MT-300K-Filtered"
FINETUNE_DEFAULTS = {
    "MLM_DATA_ARGS": "--train-samples 128000 --lr-decay-samples 128000 --lr-warmup-samples 0 --split 100,0,0",
    "MLM_OPTIM_ARGS": "--lr {lr} --min-lr 1.0e-7 --lr-decay-style cosine --clip-grad 1.0 --weight-decay 0.0 "
                      "--adam-beta1 0.9 --adam-beta2 0.95 --use-distributed-optimizer",
    "MLM_TRAIN_ARGS": "--micro-batch-size 1",
    "MLM_EVAL_ARGS": "--eval-iters 1 --eval-interval 1000 --save-interval 1000 --log-interval 100",
}


@dataclass
class Plan:
    entry: str  # the Python script, relative to the repository
    launch: list[str]  # what starts it on this node's processes
    flags: list[str]
    layout: Layout


def _complete_checkpoint(path: str) -> Path | None:
    """The iteration directory of a complete Megatron checkpoint at `path`, else None."""
    if not (Path(path) / TRACKER).is_file():
        return None
    try:
        return latest_checkpoint_dir(path)[0]
    except UserError:
        return None


def _check_hf_dir(name: str, path: str) -> None:
    """A Hugging Face directory, or a .gguf file (the entry script's parse dequantizes it, once)."""
    if is_gguf(path):
        if not Path(path).is_file():
            raise LaunchError(f"{name}={path}: no such GGUF file")
        return
    if not Path(path).exists():
        raise LaunchError(f"{name}={path}: no such directory")
    if not (Path(path) / "config.json").is_file():
        raise LaunchError(f"{name}={path}: no config.json; not a Hugging Face model directory")


def _check_checkpoint(name: str, path: str) -> None:
    if not Path(path).exists():
        raise LaunchError(f"{name}={path}: no such directory")
    if not (Path(path) / "config.json").is_file() and _complete_checkpoint(path) is None:
        raise LaunchError(f"{name}={path}: neither a Hugging Face model (config.json) nor a complete Megatron "
                          "checkpoint (latest_checkpointed_iteration.txt and the directory it names)")


def finetune(s: Settings, conf: ModelConf, work: str) -> Plan:
    """Fine-tune MODEL (a config in conf/) on chat data: examples/finetune.sh Qwen/Qwen3-0.6B

  HF_MODEL_CKPT   the Hugging Face model to start from (imported on the fly); a .gguf file is dequantized once
                  into $MLM_WORK_DIR/gguf
  MLM_MODEL_CKPT  or a Megatron checkpoint to start from (its weights; a new run)
  MLM_MODEL_SAVE  where checkpoints go (default $MLM_WORK_DIR/<MODEL>_sft). When it already holds a complete
                  training checkpoint, the run resumes from it (optimizer, schedule, data position);
                  MLM_RESUME=0 starts over instead.
  DATASET         a JSONL file or directory of chat records (--data-path), or a Hugging Face dataset name
                  (--finetune-hf-dataset); default: the tutorial's Magpie dataset
  VALID_DATASET   validation files, e.g. "easy.jsonl hard.jsonl": DATASET becomes --train-data-path, these
                  --valid-data-path; several are validated each on its own, each with its loss and perplexity
                  (--multiple-validation-sets). MLM_EVAL_ARGS sets how often and how many batches (--eval-iters).
  PEFT            lora: LoRA adapters on the frozen model (default none: full fine-tuning); LORA_RANK (16) and
                  LORA_ALPHA (32) size them; a conf may give LoRA its own CONF_LORA_MLM_OPTIM_ARGS /
                  CONF_LORA_MLM_DATA_ARGS
  EPOCHS          this many passes over the training data (--train-epochs); replaces the run length of the
                  default or the conf
  KEEP_LAST       keep only the newest N checkpoints in MLM_MODEL_SAVE (--keep-last; default: keep all)
  SAVE_HF         1: a Hugging Face directory beside every checkpoint, iter_N/hf/ (--save-hf; LoRA: the PEFT
                  adapter); final: for the last checkpoint only; 0 (default): none (convert.sh exports later)
  TEACHER_CKPT    distill from this teacher (--export-kd-teacher-load): a Hugging Face directory, a .gguf or a
                  Megatron checkpoint sharing the model's tokenizer. QAD: MLM_MODEL_CKPT=<quantize.sh's checkpoint>
                  TEACHER_CKPT=<the unquantized model>. KD_CFG: Megatron-LM's distillation YAML (--export-kd-cfg);
                  TEACHER_MODEL_CONFIG: the teacher's shape where it does not record it (docs/distillation.md)
  LOSS_NORMALIZATION  token (default): the mean over supervised tokens; sample: each conversation's mean, then
                  the mean over conversations (--loss-normalization)
  LOSS_TURNS      all (default) or last: train on each conversation's last assistant turn only (--loss-turns)
  NEFTUNE_NOISE_ALPHA  NEFTune's noise on the input embeddings, e.g. 5 (--neftune-noise-alpha; default none)
  MLM_DATA_ARGS MLM_OPTIM_ARGS MLM_TRAIN_ARGS MLM_EVAL_ARGS MLM_EXTRA_ARGS   flags (MLM_EXTRA_ARGS last: it wins)
"""
    layout = read_layout(s)
    launch = launcher(s, layout)
    lr, peft_flags = _peft(s)
    data = s.setting("MLM_DATA_ARGS", FINETUNE_DEFAULTS["MLM_DATA_ARGS"])
    data = _user_run_length(s, data)
    if s.given("VALID_DATASET") and s.lookup("MLM_DATA_ARGS")[1] != "env" and has_flag("--split", data):
        data = drop_flags(data, ("--split",))  # the files name the splits (a --split of the user's stays: an error)
        s.note("note", f"VALID_DATASET names the validation files: MLM_DATA_ARGS drops --split, becoming '{data}'")
    epochs = s.given("EPOCHS")
    if epochs:
        s.positive_int("EPOCHS", epochs)
        if s.lookup("MLM_DATA_ARGS")[1] != "env":
            data = drop_run_length(data)
        data = f"{data} --train-epochs {epochs}".strip()
        s.note("EPOCHS", epochs, f"env: MLM_DATA_ARGS becomes '{data}'")
    groups = [s.setting(name, FINETUNE_DEFAULTS[name].format(lr=lr))
              for name in ("MLM_OPTIM_ARGS", "MLM_TRAIN_ARGS", "MLM_EVAL_ARGS")]
    extra = s.given("MLM_EXTRA_ARGS")
    s.note("MLM_EXTRA_ARGS", extra)
    keep = s.given("KEEP_LAST")
    keep_flags = ["--keep-last", str(s.positive_int("KEEP_LAST", keep))] if keep else []
    s.note("KEEP_LAST", keep)
    save_hf = s.choice("SAVE_HF", "0", {"1": "every checkpoint", "final": "the last checkpoint", "0": "none"})
    keep_flags += {"0": [], "1": ["--save-hf"], "final": ["--save-hf", "final"]}[save_hf]
    flags = [*conf.model_args, *conf.train_args, *layout.flags(), *_start(s, conf.name, work),
             "--distributed-timeout-minutes", "30", *_dataset(s, data, extra, work), *peft_flags, *keep_flags,
             *_teacher(s), *_loss_control(s), *words(data), *(w for g in groups for w in words(g)), *words(extra)]
    return Plan("examples/finetune.py", launch, flags, layout)


def _loss_control(s: Settings) -> list[str]:
    """LOSS_NORMALIZATION, LOSS_TURNS, NEFTUNE_NOISE_ALPHA -> their flags (checked there, with the others)."""
    flags = []
    for name, flag in (("LOSS_NORMALIZATION", "--loss-normalization"), ("LOSS_TURNS", "--loss-turns"),
                       ("NEFTUNE_NOISE_ALPHA", "--neftune-noise-alpha")):
        value = s.given(name)
        if value:
            s.note(name, value)
            flags += [flag, value]
    return flags


def _teacher(s: Settings) -> list[str]:
    """TEACHER_CKPT, KD_CFG, TEACHER_MODEL_CONFIG -> Megatron-LM's --export-kd-* flags (distillation)."""
    teacher = s.given("TEACHER_CKPT")
    files = {name: s.given(name) for name in ("KD_CFG", "TEACHER_MODEL_CONFIG")}
    if not teacher:
        given = [name for name, value in files.items() if value]
        if given:
            raise LaunchError(f"{given[0]} needs a teacher: set TEACHER_CKPT too")
        return []
    if is_gguf(teacher):
        _check_hf_dir("TEACHER_CKPT", teacher)
    else:
        _check_checkpoint("TEACHER_CKPT", teacher)
    s.note("TEACHER_CKPT", teacher, "distillation from this teacher")
    flags = ["--export-kd-teacher-load", teacher]
    for name, flag in (("KD_CFG", "--export-kd-cfg"), ("TEACHER_MODEL_CONFIG", "--export-kd-teacher-model-config")):
        if files[name]:
            if not Path(files[name]).is_file():
                raise LaunchError(f"{name}={files[name]}: no such file")
            s.note(name, files[name])
            flags += [flag, files[name]]
    return flags


DPO_DEFAULTS = {
    "MLM_DATA_ARGS": "--train-epochs 1 --split 98,2,0",
    "MLM_OPTIM_ARGS": "--lr {lr} --min-lr 0 --lr-decay-style cosine --lr-warmup-fraction 0.1 --clip-grad 1.0 "
                      "--weight-decay 0.0 --adam-beta1 0.9 --adam-beta2 0.95 --use-distributed-optimizer",
    "MLM_TRAIN_ARGS": "--micro-batch-size 1",
    "MLM_EVAL_ARGS": "--eval-iters 0 --save-interval 1000 --log-interval 10",
}


def dpo(s: Settings, conf: ModelConf, work: str) -> Plan:
    """Preference training (DPO) of MODEL after fine-tuning: examples/dpo.sh Qwen/Qwen3-0.6B

  DATASET         a JSONL file of preference pairs (default: the conf's CONF_DPO_DATASET): TRL's {"prompt",
                  "chosen", "rejected"} (messages or strings), chosen/rejected conversations sharing their prompt,
                  or NeMo-RL's {"context", "completions": [{"rank", "completion"}]}
  MLM_MODEL_SAVE  where checkpoints go (default $MLM_WORK_DIR/<MODEL>_dpo); a complete training checkpoint there
                  is resumed (MLM_RESUME=0 starts over)
  MLM_MODEL_CKPT  the model to start from (and the reference); default: finetune.sh's run in
                  $MLM_WORK_DIR/<MODEL>_sft when it has a checkpoint, else HF_MODEL_CKPT
  HF_MODEL_CKPT   a Hugging Face model to start from instead
  DPO_LOSS        sigmoid (default), ipo or hinge;  DPO_BETA (0.1);  DPO_SFT_WEIGHT: RPO's NLL weight (0)
  PEFT            lora: adapters on the frozen model (LORA_RANK, LORA_ALPHA), as finetune.sh
  SAVE_HF         1 / final / 0 (default), as finetune.sh
  MLM_DATA_ARGS MLM_OPTIM_ARGS MLM_TRAIN_ARGS MLM_EVAL_ARGS MLM_EXTRA_ARGS   flags (MLM_EXTRA_ARGS last: it wins)
"""
    for name in (*DPO_DEFAULTS, "DATASET"):  # a conf's fine-tuning values are not DPO's: its CONF_DPO_* ones
        dpo_value = s.conf.pop(f"CONF_DPO_{name}", None)
        s.conf.pop(f"CONF_{name}", None)
        if dpo_value:
            s.conf[f"CONF_{name}"] = dpo_value
    layout = read_layout(s)
    launch = launcher(s, layout)
    peft = s.choice("PEFT", "none", {"lora": "LoRA adapters", "none": "the full model"})
    peft_flags = []
    if peft == "lora":
        rank = s.positive_int("LORA_RANK", s.setting("LORA_RANK", str(field_default("lora_rank"))))
        peft_flags = ["--peft", "lora", "--lora-rank", str(rank), "--lora-alpha",
                      s.setting("LORA_ALPHA", f"{field_default('lora_alpha'):g}")]
    lr = "5.0e-6" if peft == "lora" else "5.0e-7"
    data = _user_run_length(s, s.setting("MLM_DATA_ARGS", DPO_DEFAULTS["MLM_DATA_ARGS"]))
    groups = [s.setting(name, DPO_DEFAULTS[name].format(lr=lr))
              for name in ("MLM_OPTIM_ARGS", "MLM_TRAIN_ARGS", "MLM_EVAL_ARGS")]
    extra = s.given("MLM_EXTRA_ARGS")
    s.note("MLM_EXTRA_ARGS", extra)
    dataset = s.setting("DATASET")
    if not dataset or not Path(dataset).expanduser().exists():
        raise LaunchError(f"DATASET={dataset or ''}: give a JSONL file of preference pairs")
    loss = s.choice("DPO_LOSS", "sigmoid", {"sigmoid": "DPO", "ipo": "IPO", "hinge": "hinge"})
    dpo_flags = ["--dpo-loss-type", loss, "--dpo-beta", s.setting("DPO_BETA", "0.1"),
                 "--dpo-sft-weight", s.setting("DPO_SFT_WEIGHT", "0")]
    save_hf = s.choice("SAVE_HF", "0", {"1": "every checkpoint", "final": "the last checkpoint", "0": "none"})
    flags = [*conf.model_args, *conf.train_args, *layout.flags(),
             *_start(s, conf.name, work, run="dpo", after=f"{work}/{conf.name}_sft"),
             "--distributed-timeout-minutes", "30", "--data-path", dataset, "--data-cache-dir", f"{work}/data_cache",
             *dpo_flags, *peft_flags, *{"0": [], "1": ["--save-hf"], "final": ["--save-hf", "final"]}[save_hf],
             *words(data), *(w for g in groups for w in words(g)), *words(extra)]
    return Plan("examples/dpo.py", launch, flags, layout)


def _user_run_length(s: Settings, data: str) -> str:
    """A run length in MLM_EXTRA_ARGS or after MODEL replaces the default's or the conf's (not MLM_DATA_ARGS's from
    the environment: two run lengths the user gave are refused by the entry script)."""
    user = shlex.join([*words(s.given("MLM_EXTRA_ARGS")), *s.command_line])
    if s.lookup("MLM_DATA_ARGS")[1] == "env" or not any(has_flag(f, user) for f in RUN_LENGTH_SETTERS):
        return data
    data = drop_run_length(data)
    s.note("note", f"the run length given replaces MLM_DATA_ARGS's: it becomes '{data}'")
    return data


def _peft(s: Settings) -> tuple[str, list[str]]:
    """(default learning rate, PEFT flags); under LoRA the conf's CONF_LORA_* replace its full-tuning values."""
    peft = s.choice("PEFT", "none", {"lora": "LoRA adapters", "none": "full fine-tuning"})
    if peft == "none":
        return "5.0e-5", []
    for name in ("MLM_DATA_ARGS", "MLM_OPTIM_ARGS"):
        if s.conf.get(f"CONF_LORA_{name}"):
            s.conf[f"CONF_{name}"] = s.conf[f"CONF_LORA_{name}"]
    rank = s.positive_int("LORA_RANK", s.setting("LORA_RANK", str(field_default("lora_rank"))))
    alpha = s.setting("LORA_ALPHA", f"{field_default('lora_alpha'):g}")
    return "1.0e-4", ["--peft", "lora", "--lora-rank", str(rank), "--lora-alpha", alpha]


def _dataset(s: Settings, data: str, extra: str, work: str) -> list[str]:
    """DATASET (and VALID_DATASET), unless MLM_DATA_ARGS names the data itself (the tutorial's way); the cache under
    MLM_WORK_DIR."""
    flags = []
    if any(has_flag(f, data) for f in ("--data-path", "--finetune-hf-dataset", "--train-data-path")):
        for name in ("DATASET", "VALID_DATASET"):
            if s.given(name):
                raise LaunchError(f"{name}={s.given(name)} and MLM_DATA_ARGS both name the data; keep one")
        s.note("DATASET", "(in MLM_DATA_ARGS)")
    elif s.given("VALID_DATASET"):
        flags = _train_and_valid(s)
    else:
        dataset = s.setting("DATASET", DEFAULT_DATASET)
        if _is_path(dataset):
            if not Path(dataset).expanduser().exists():
                raise LaunchError(f"DATASET={dataset}: no such file")
            flags = ["--data-path", dataset]
        else:
            flags = ["--finetune-hf-dataset", dataset]
    if not has_flag("--data-cache-dir", data, extra):
        flags += ["--data-cache-dir", f"{work}/data_cache"]
    return flags


def _train_and_valid(s: Settings) -> list[str]:
    """DATASET and VALID_DATASET -> Megatron-LM's per-split form; several validation files validated each alone."""
    dataset, valid = s.setting("DATASET", DEFAULT_DATASET), words(s.given("VALID_DATASET"))
    if not _is_path(dataset) or not Path(dataset).expanduser().exists():
        raise LaunchError(f"VALID_DATASET needs DATASET to be a local file of training records (DATASET={dataset})")
    for path in valid:
        if not Path(path).expanduser().exists():
            raise LaunchError(f"VALID_DATASET: {path}: no such file")
    sets = ["--multiple-validation-sets"] if len(valid) > 1 else []
    s.note("VALID_DATASET", " ".join(valid), "each validated on its own" if sets else "")
    return ["--train-data-path", dataset, "--valid-data-path", *valid, *sets]


def _is_path(value: str) -> bool:
    """A local path (exists, or written like one) rather than a Hugging Face hub name."""
    return os.path.exists(value) or value.startswith(("/", ".", "~")) or value.endswith((".json", ".jsonl"))


def _start(s: Settings, model: str, work: str, run: str = "sft", after: str | None = None) -> list[str]:
    """Resume MLM_MODEL_SAVE when it holds a training checkpoint (unless MLM_RESUME=0), else start from a model:
    MLM_MODEL_CKPT, else the checkpoint of the stage before (`after`: dpo starts from finetune.sh's), else
    HF_MODEL_CKPT."""
    save = s.setting("MLM_MODEL_SAVE", f"{work}/{model}_{run}")
    resume = s.lookup("MLM_RESUME", "1")[0]
    if resume not in ("0", "1"):
        raise LaunchError(f"MLM_RESUME={resume}: use 1 (resume, default) or 0 (start over)")
    last = resumable_checkpoint(save) if resume == "1" else _complete_checkpoint(save)  # MLM_RESUME=0: explicit
    trained = last is not None and CheckpointDir(last).is_training
    if trained and resume == "1":
        s.note("start", f"resuming {save} from iteration {int(last.name.removeprefix('iter_'))} (MLM_RESUME=0 "
                        "starts over)")
        return ["--load", save, "--save", save]
    ckpt = s.given("MLM_MODEL_CKPT")
    before = after and _complete_checkpoint(after)
    if ckpt:
        _check_checkpoint("MLM_MODEL_CKPT", ckpt)
        start, how = ckpt, f"MLM_MODEL_CKPT={ckpt} (weights only: a new run)"
    elif before:
        start, how = after, f"{after} (the fine-tuned run; MLM_MODEL_CKPT or HF_MODEL_CKPT name another start)"
        if s.given("HF_MODEL_CKPT"):
            start, how = s.given("HF_MODEL_CKPT"), f"HF_MODEL_CKPT={s.given('HF_MODEL_CKPT')} (imported on the fly)"
            _check_hf_dir("HF_MODEL_CKPT", start)
    else:
        start = s.setting("HF_MODEL_CKPT")
        if not start:
            raise LaunchError(f"set HF_MODEL_CKPT to a local Hugging Face directory of {model} (e.g. hf download "
                              f"{model} --local-dir DIR), or MLM_MODEL_CKPT to a Megatron checkpoint")
        _check_hf_dir("HF_MODEL_CKPT", start)
        how = f"HF_MODEL_CKPT={start} (imported on the fly)"
    s.note("start", how)
    if trained:
        s.note("note", f"MLM_RESUME=0: starting over; new checkpoints replace those in {save}")
    return ["--load", start, "--finetune", "--save", save]


def _inference_load(s: Settings, model: str, work: str) -> str:
    """MLM_MODEL_CKPT, else the fine-tuned checkpoint in MLM_MODEL_SAVE when there is one, else HF_MODEL_CKPT."""
    ckpt, save = s.given("MLM_MODEL_CKPT"), s.given("MLM_MODEL_SAVE")
    if ckpt:
        _check_checkpoint("MLM_MODEL_CKPT", ckpt)
        s.note("load", ckpt, "MLM_MODEL_CKPT")
        return ckpt
    if _complete_checkpoint(save or f"{work}/{model}_sft") is not None:
        s.note("load", save or f"{work}/{model}_sft", "MLM_MODEL_SAVE: the fine-tuned checkpoint")
        return save or f"{work}/{model}_sft"
    if save:
        raise LaunchError(f"MLM_MODEL_SAVE={save}: no complete checkpoint there (latest_checkpointed_iteration.txt)")
    hf = s.setting("HF_MODEL_CKPT")
    if not hf:
        raise LaunchError("nothing to load: set MLM_MODEL_CKPT (a Megatron checkpoint or a Hugging Face directory) "
                          f"or HF_MODEL_CKPT, or fine-tune first (no checkpoint in {work}/{model}_sft)")
    _check_hf_dir("HF_MODEL_CKPT", hf)
    s.note("load", hf, "HF_MODEL_CKPT")
    return hf


def generate(s: Settings, conf: ModelConf, work: str) -> Plan:
    """Generate from MODEL: examples/generate.sh Qwen/Qwen3-0.6B

  MLM_MODEL_CKPT  what to load: a Megatron checkpoint or a Hugging Face directory. Default: the fine-tuned
                  checkpoint of finetune.sh (MLM_MODEL_SAVE, default $MLM_WORK_DIR/<MODEL>_sft) when there
                  is one, else HF_MODEL_CKPT
  PROMPTS_PATH    prompts: JSONL with "messages" (a final assistant turn is kept as the reference answer) or
                  one plain-text prompt per line; default: a few built-in prompts
  OUTPUT_PATH     also write the completions there (JSONL: prompt, completion, reference, stop reason)
  MLM_EXTRA_ARGS  e.g. "--max-new-tokens 64 --temperature 0.7 --top-p 0.9 --enable-thinking"
"""
    layout = read_layout(s)
    launch = launcher(s, layout)
    flags = ["--load", _inference_load(s, conf.name, work)]
    prompts, output = s.given("PROMPTS_PATH"), s.given("OUTPUT_PATH")
    if prompts:
        if not Path(prompts).is_file():
            raise LaunchError(f"PROMPTS_PATH={prompts}: no such file")
        flags += ["--prompts-file", prompts]
    s.note("PROMPTS_PATH", prompts or "(built-in prompts)")
    if output:
        flags += ["--output", output]
        s.note("OUTPUT_PATH", output)
    return Plan("examples/generate.py", launch, [*conf.model_args, *layout.flags(), *flags, *_extra(s)], layout)


def mmlu(s: Settings, conf: ModelConf, work: str) -> Plan:
    """MMLU accuracy of MODEL: examples/mmlu.sh Qwen/Qwen3-0.6B

  MLM_MODEL_CKPT  what to load, as in generate.sh (default: the fine-tuned checkpoint, else HF_MODEL_CKPT)
  MMLU_DATASET    a Hugging Face dataset name (default cais/mmlu) or a local directory (dev/ and test/ CSVs)
  MLM_EXTRA_ARGS  e.g. "--few-shot 5 --fraction 0.1 --lower-bound 0.4 --results mmlu.json"
"""
    layout = read_layout(s)
    launch = launcher(s, layout)
    load = _inference_load(s, conf.name, work)
    dataset = s.setting("MMLU_DATASET", "cais/mmlu")
    if _is_path(dataset) and not Path(dataset).is_dir():
        raise LaunchError(f"MMLU_DATASET={dataset}: no such directory")
    flags = [*conf.model_args, *layout.flags(), "--load", load, "--mmlu-dataset", dataset, *_extra(s)]
    return Plan("examples/mmlu.py", launch, flags, layout)


def convert(s: Settings, conf: ModelConf, work: str) -> Plan:
    """Convert MODEL's checkpoints: examples/convert.sh Qwen/Qwen3-0.6B

Hugging Face -> Megatron (MLM_MODEL_CKPT unset): imports HF_MODEL_CKPT into a weights-only Megatron checkpoint
  at the layout TP/PP/EP/ETP, saved in MLM_MODEL_SAVE (default $MLM_WORK_DIR/<MODEL>_mlm); finetune.sh can
  start from it (MLM_MODEL_CKPT=<that directory>).
Megatron -> Hugging Face (MLM_MODEL_CKPT set): exports the checkpoint (saved at any layout) to EXPORT_DIR
  (default $MLM_WORK_DIR/<MODEL>_export), loadable by transformers, with manifest.json (sizes, checksums) and
  parity.json (its logits checked against the Megatron model's). Runs at the TP x PP the checkpoint was saved at
  (its run_args.json; TP, PP, EP, ETP given here win; a quantized or grouped-GEMM checkpoint, or one without
  run_args.json, at TP=1); EXPORT_DTYPE: fp32, bf16 or fp16 (default: the training dtype). A LoRA checkpoint exports as a PEFT adapter folder, or with MERGE_LORA=1 as a full model with
  the adapters merged in. The same writer as finetune.sh's --save-hf.
"""
    ckpt = s.given("MLM_MODEL_CKPT")
    if ckpt:
        s.note("direction", "Megatron -> Hugging Face")
        ckpt_dir = _complete_checkpoint(ckpt)
        if ckpt_dir is None:
            raise LaunchError(f"MLM_MODEL_CKPT={ckpt}: not a complete Megatron checkpoint "
                              "(latest_checkpointed_iteration.txt and the directory it names)")
        layout, layout_flags = _export_layout(s, ckpt_dir)
        launch = launcher(s, layout)
        s.note("MLM_MODEL_CKPT", ckpt, "env")
        save = s.setting("EXPORT_DIR", f"{work}/{conf.name}_export")
        flags = [*layout_flags, "--load", ckpt, "--save", save]
        dtype = s.given("EXPORT_DTYPE")
        flags += ["--export-dtype", dtype] if dtype else []
        s.note("EXPORT_DTYPE", dtype or "(as trained: --bf16/--fp16 flags, else fp32)")
        merge = s.choice("MERGE_LORA", "0", {"1": "a LoRA checkpoint exported merged", "0": "as a PEFT adapter"})
        flags += ["--merge-lora"] if merge == "1" else []
        return Plan("tools/convert.py", launch, [*conf.model_args, *flags, *_extra(s)], layout)
    s.note("direction", "Hugging Face -> Megatron")
    layout = read_layout(s)
    launch = launcher(s, layout)
    hf = s.setting("HF_MODEL_CKPT")
    if not hf:
        raise LaunchError(f"set HF_MODEL_CKPT (a Hugging Face directory of {conf.name}) to import it, or "
                          "MLM_MODEL_CKPT (a Megatron checkpoint) to export it")
    _check_hf_dir("HF_MODEL_CKPT", hf)
    save = s.setting("MLM_MODEL_SAVE", f"{work}/{conf.name}_mlm")
    flags = ["--load", hf, "--save", save]
    # Writing into the input is refused by check_not_converting_in_place, as for tools/convert.py itself.
    return Plan("tools/convert.py", launch, [*conf.model_args, *layout.flags(), *flags, *_extra(s)], layout)


def _export_layout(s: Settings, ckpt_dir: Path) -> tuple[Layout, list[str]]:
    """An unquantized checkpoint is exported at the TP x PP it was saved at (each rank writes the layers it holds;
    experts reshard on load, EP 1 unless set; TP, PP, EP and ETP set in the environment win). A quantized or
    grouped-GEMM one, or one without run_args.json (written elsewhere), at TP=1 with one process per pipeline stage
    (nvidia-modelopt's exporters; the latter: its layout is not recorded)."""
    view = CheckpointDir(ckpt_dir)
    args = view.run_args()
    why = ("quantized" if view.is_quantized else "with grouped-GEMM experts" if args and args.get("moe_grouped_gemm")
           else f"without {RUN_ARGS}" if args is None else None)
    if why:
        s.note("note", f"a checkpoint {why} is exported at TP=1 with one process per pipeline stage"
                       + _ignored(s, ("TP", "CP", "EP", "ETP", "DP")))
        layout = read_layout(s, forced={n: 1 for n in ("TP", "CP", "EP", "ETP", "DP")})
        return layout, layout.flags()
    saved = view.model_layout()
    forced = {"CP": 1, "DP": 1, **{n: saved[n.lower()] for n in ("TP", "PP") if not s.given(n)}}
    s.note("note", f"exported at the checkpoint's own layout (TP={saved['tp']} PP={saved['pp']}); TP, PP, EP and ETP "
                   "in the environment choose another" + _ignored(s, ("CP", "DP")))
    layout = read_layout(s, forced=forced)
    flags = layout.flags()
    if saved["vp_layers"] and layout.pp == saved["pp"]:
        flags += ["--num-layers-per-virtual-pipeline-stage", str(saved["vp_layers"])]
    return layout, flags


def _ignored(s: Settings, names: tuple[str, ...]) -> str:
    """' (ignored: TP=2 DP=4)' for the sizes set in the environment that the export's layout overrides."""
    given = [f"{n}={s.given(n)}" for n in names if s.given(n) not in ("", "1")]
    return f" (ignored: {' '.join(given)})" if given else ""


def quantize(s: Settings, conf: ModelConf, work: str) -> Plan:
    """Quantize MODEL with nvidia-modelopt (calibrate, then fake-quantize): examples/quantize.sh MODEL [QUANT_CFG]

  QUANT_CFG       the format, after MODEL or as a variable: fp8 (default), int8_sq, int4_awq, w4a8_awq, int8; nvfp4
                  and mxfp8 need CUDA; or a config name of modelopt.torch.quantization (e.g. INT8_DEFAULT_CFG)
  MLM_MODEL_CKPT  what to quantize, as in generate.sh: default the fine-tuned checkpoint of finetune.sh
                  (MLM_MODEL_SAVE, default $MLM_WORK_DIR/<MODEL>_sft) when there is one, else HF_MODEL_CKPT
  MLM_QUANT_CKPT  where the quantized Megatron checkpoint goes (default $MLM_WORK_DIR/<MODEL>_quant)
  DATASET         calibration data: the SFT data (a JSONL of chat records, rendered with the chat template, or a
                  Hugging Face dataset name; default as finetune.sh's); CALIB_DATA instead: a JSONL of chat
                  records or {"text": ...} lines
  CALIB_SIZE      calibration samples (default 512), each cut to the conf's --seq-length tokens
  MLM_EXTRA_ARGS  e.g. "--weight-only --disable-qkv-quant --num-last-layers-to-skip-quant 1"
Next: finetune.sh MODEL with MLM_MODEL_CKPT=<MLM_QUANT_CKPT> trains through the quantizers (QAT); generate.sh and
mmlu.sh with MLM_MODEL_CKPT=<it> run the quantized model; export.sh writes it for serving.
"""
    layout = read_layout(s)
    launch = launcher(s, layout)
    if s.command_line and not s.command_line[0].startswith("-"):  # quantize.sh MODEL QUANT_CFG, as Megatron-LM's
        fmt, s.command_line = s.command_line[0], s.command_line[1:]
        s.note("QUANT_CFG", fmt, "argument after MODEL")
    else:
        fmt = s.setting("QUANT_CFG", "fp8")
    _check_quant_format(fmt)
    if has_flag("--export-quant-cfg", s.given("MLM_EXTRA_ARGS"), shlex.join(s.command_line)):
        raise LaunchError("give the format as QUANT_CFG (or the argument after MODEL), not as --export-quant-cfg in "
                          "MLM_EXTRA_ARGS or the flags")
    load = _inference_load(s, conf.name, work)
    save = s.setting("MLM_QUANT_CKPT", f"{work}/{conf.name}_quant")
    calib = s.given("CALIB_DATA")
    if calib:
        if not Path(calib).is_file():
            raise LaunchError(f"CALIB_DATA={calib}: no such file")
        data = ["--calib-data-path", calib]
        s.note("CALIB_DATA", calib)
    else:
        dataset = s.setting("DATASET", DEFAULT_DATASET)
        if _is_path(dataset) and not Path(dataset).expanduser().exists():
            raise LaunchError(f"DATASET={dataset}: no such file")
        data = ["--data-path", dataset] if _is_path(dataset) else ["--finetune-hf-dataset", dataset]
    size = s.positive_int("CALIB_SIZE", s.setting("CALIB_SIZE", "512"))
    flags = [*conf.model_args, *layout.flags(), "--load", load, "--save", save, "--export-quant-cfg", fmt,
             "--calib-size", str(size), *data, *_extra(s)]
    return Plan("examples/quantize.py", launch, flags, layout)


def _check_quant_format(name: str) -> None:
    """The format's name and, for a CUDA-only one, a CUDA device: before anything launches."""
    import torch

    from megatron_sft.arguments.quantize import check_cuda_format

    try:
        check_cuda_format(name, "auto", torch.cuda.is_available(), flag="QUANT_CFG=")
    except UserError as err:
        raise LaunchError(str(err)) from None


def export(s: Settings, conf: ModelConf, work: str) -> Plan:
    """Export MODEL's Megatron checkpoint to Hugging Face for serving: examples/export.sh MODEL

  MLM_MODEL_CKPT  the checkpoint (default: quantize.sh's MLM_QUANT_CKPT, $MLM_WORK_DIR/<MODEL>_quant, when it
                  exists). A quantized one (quantize.sh, or finetune.sh on it) is written in nvidia-modelopt's
                  unified format (low-bit weights and their scales, hf_quant_config.json, quantization_config in
                  config.json): fp8 by modelopt's Megatron exporter (vLLM and TensorRT-LLM serve it); int8_sq,
                  int8, int4_awq, w4a8_awq by its Hugging Face exporter (TensorRT-LLM lists W8A8 SmoothQuant, W4A16
                  and W4A8 AWQ; check your engine), in one process (PP=1), the unquantized tensors in bf16 (fp16
                  with EXPORT_DTYPE=fp16); an unquantized one as convert.sh writes it
  EXPORT_DIR      the Hugging Face directory (default $MLM_WORK_DIR/<MODEL>_export)
  EXPORT_DTYPE    the unquantized tensors' dtype: bf16, fp16, fp32 (default: the training dtype)
A quantized checkpoint is exported at TP=1 with one process per pipeline stage (PP), whatever layout it was saved
at; an unquantized one at its own layout, as convert.sh does.
"""
    if not s.given("MLM_MODEL_CKPT"):
        quant = s.setting("MLM_QUANT_CKPT", f"{work}/{conf.name}_quant")
        if _complete_checkpoint(quant) is None:
            raise LaunchError(f"set MLM_MODEL_CKPT to the Megatron checkpoint to export (no quantize.sh output in "
                              f"MLM_QUANT_CKPT={quant})")
        s.env = {**s.env, "MLM_MODEL_CKPT": quant}  # convert's Megatron -> Hugging Face direction
    return convert(s, conf, work)


def _extra(s: Settings) -> list[str]:
    extra = s.given("MLM_EXTRA_ARGS")
    s.note("MLM_EXTRA_ARGS", extra)
    return words(extra)


SCRIPTS = {"finetune": finetune, "dpo": dpo, "generate": generate, "mmlu": mmlu, "convert": convert, "quantize": quantize,
           "export": export}
