"""The run's configuration: typed, documented, frozen sections, built once from the flags by parse_args.

The ground floor of the package: it imports nothing of megatron_sft but errors, so every layer (runtime, models,
peft, data, the applications) reads the config it is given without looking up at the flag parser (arguments/).

    cfg = parse_args(argv)               # resolved (flag > checkpoint > default), derived, validated, frozen
    transformer_config(cfg)              # to_mcore.py; each module reads the sections it needs
    cfg.replace(train_iters=120)         # the few values known only later make a new config, never an edit
    cfg.to_record() / RunConfig.from_record(record)   # run_args.json, written from it and read back into it

Field names are Megatron-LM's dest names (`--seq-length` -> `seq_length`), so a checkpoint's run_args.json
reads like Megatron-LM's. Values here are the resolved ones: a field a flag left unset holds the checkpoint's
value or Megatron's default, never None where Megatron has a default. Flat reads (`cfg.seq_length`) work too,
for scripts and tests; the package reads sections.
"""

from __future__ import annotations

import dataclasses
import os
from argparse import Namespace
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any

from megatron_sft.errors import UserError

# The record formats --data-format accepts (data/formats.py reads each one; it checks this list is its own).
DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "dolly", "openorca", "prompt_completion", "input_output")
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")  # every attention and MLP projection
MAMBA_LORA_TARGETS = ("in_proj", "out_proj")  # a Mamba layer's projections (hybrid models; default there too)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of the model, as Megatron-Core builds it."""

    num_layers: int | None = None
    hidden_size: int | None = None
    ffn_hidden_size: int | None = None  # default 4h; with SwiGLU 2/3 of that, rounded down to a multiple of 64
    num_attention_heads: int | None = None
    group_query_attention: bool = False
    num_query_groups: int | None = None  # = num_attention_heads without group query attention
    kv_channels: int | None = None  # head dimension; default hidden / heads
    max_position_embeddings: int | None = None  # default seq_length
    position_embedding_type: str = "learned_absolute"
    rotary_percent: float = 1.0
    rotary_base: int = 10000
    use_rope_scaling: bool = False  # Llama 3.x RoPE scaling
    rope_scaling_factor: float = 8.0
    normalization: str = "LayerNorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = False
    qk_layernorm: bool = False
    add_qkv_bias: bool = False
    add_bias_linear: bool = True
    untie_embeddings_and_output_weights: bool = False
    init_method_std: float = 0.02
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.1
    make_vocab_size_divisible_by: int = 128
    padded_vocab_size: int | None = None  # the checkpoint's vocab_size; None: pad the tokenizer's (fresh models)
    masked_softmax_fusion: bool = True
    apply_rope_fusion: bool = True
    bias_swiglu_fusion: bool = True
    bias_dropout_fusion: bool = True
    use_mcore_models: bool = False  # accepted for compatibility; always on
    num_experts: int | None = None  # None: a dense model
    moe_ffn_hidden_size: int | None = None  # default ffn_hidden_size
    moe_router_topk: int = 2
    moe_router_pre_softmax: bool = False
    moe_router_score_function: str = "softmax"
    moe_router_load_balancing_type: str = "aux_loss"
    moe_aux_loss_coeff: float = 0.0
    moe_router_dtype: str | None = None
    moe_token_dispatcher_type: str = "allgather"
    moe_grouped_gemm: bool = False
    moe_router_enable_expert_bias: bool = False  # a per-expert bias for choosing experts (sigmoid routers)
    moe_router_topk_scaling_factor: float | None = None  # the chosen experts' weights scaled by this
    moe_shared_expert_intermediate_size: int | None = None  # a shared expert of this width; None: none
    squared_relu: bool = False  # relu(x)^2 MLP activation (Nemotron-H)
    # Hybrid models (Megatron-Core's MambaModel): one symbol per layer, M Mamba-2, * attention, - MLP, E MoE
    hybrid_override_pattern: str | None = None
    is_hybrid_model: bool = False  # accepted for compatibility (Megatron-LM); the pattern makes a model hybrid
    mamba_state_dim: int = 128
    mamba_head_dim: int = 64
    mamba_num_groups: int = 8
    mamba_num_heads: int | None = None  # None: 2 x hidden / head dim
    mamba_chunk_size: int = 128  # the SSD scan's chunk length
    mamba_conv_kernel: int = 4  # the causal convolution's width
    model_family: str | None = None  # registry family of the checkpoint (qwen3, llama, ...)
    hf_architecture: str | None = None  # its Hugging Face class name, for export
    checkpoint_vocab_size: int | None = None
    checkpoint_vocab_file: str | None = None  # the file vocab_size was read from, for messages


@dataclass(frozen=True)
class ParallelConfig:
    """How the model and the batch are split over the processes."""

    world_size: int = 1
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    num_layers_per_virtual_pipeline_stage: int | None = None
    virtual_pipeline_model_parallel_size: int | None = None  # derived from the above
    context_parallel_size: int = 1
    cp_comm_type: list[str] | None = None
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int | None = None  # default tensor_model_parallel_size
    data_parallel_size: int | None = None  # derived: world / (TP x PP x CP)
    sequence_parallel: bool = False  # turned off (with a notice) at TP 1
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    distributed_timeout_minutes: int = 10


@dataclass(frozen=True)
class TrainingConfig:
    """Batch, run length, optimizer, LR schedule, precision and recompute."""

    micro_batch_size: int = 1
    global_batch_size: int | None = None  # default micro_batch_size x data_parallel_size
    num_microbatches: int | None = None  # derived: global / (micro x DP)
    train_iters: int | None = None  # with train_epochs: set once the training split is prepared
    train_samples: int | None = None
    train_epochs: int | None = None
    exit_interval: int | None = None
    exit_duration_in_mins: int | None = None
    seed: int = 1234
    fp16: bool = False
    bf16: bool = False
    params_dtype: str = "fp32"  # derived from bf16 / fp16
    gradient_accumulation_fusion: bool = True
    check_for_nan_in_loss_and_grad: bool = True
    lm_head_chunk_size: int = 128  # supervised tokens per output-layer chunk (0: full logits)
    neftune_noise_alpha: float | None = None  # NEFTune's alpha (training/neftune.py); None: no noise
    recompute_granularity: str | None = None
    recompute_method: str | None = None
    recompute_num_layers: int | None = None
    lr: float | None = None
    min_lr: float = 0.0
    clip_grad: float = 1.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lr_decay_style: str = "linear"
    lr_decay_iters: int | None = None  # default train_iters
    lr_decay_samples: int | None = None  # default train_samples
    lr_warmup_fraction: float | None = None
    lr_warmup_iters: int = 0
    lr_warmup_samples: int = 0
    lr_wsd_decay_style: str = "exponential"
    lr_wsd_decay_iters: int | None = None
    lr_wsd_decay_samples: int | None = None
    override_opt_param_scheduler: bool = False  # resume: the LR/WD schedule from these flags (Megatron-LM's meaning)
    use_checkpoint_opt_param_scheduler: bool = False  # resume: the checkpoint's schedule, whatever the flags say


@dataclass(frozen=True)
class PeftConfig:
    """LoRA adapters (peft "lora") or full fine-tuning (None)."""

    peft: str | None = None
    # Resolved like the architecture: flag > the LoRA checkpoint's lora.json (or --lora-load's adapter) > these.
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    lora_load: str | None = None  # a Hugging Face PEFT adapter folder to start from
    merge_lora: bool = False  # convert: write a merged full model instead of a PEFT folder


@dataclass(frozen=True)
class CheckpointConfig:
    """What the run reads its model from and where it saves."""

    load: str | None = None
    pretrained_model_path: str | None = None
    gguf_cache_dir: str | None = None  # where a .gguf --load is dequantized (default $MLM_WORK_DIR/gguf)
    save: str | None = None
    save_interval: int | None = None
    save_hf: str | None = None  # "all": an HF directory beside every checkpoint (iter_N/hf), "final": the last
    save_hf_dtype: str = "bf16"
    keep_last: int | None = None  # keep only the newest N iterations (older ones deleted after a verified save)
    ckpt_step: int | None = None  # load this iteration instead of the one the tracker names
    finetune: bool = False  # weights only: iteration, optimizer and RNG start fresh
    load_optim: bool = True  # only True is accepted: a resume always restores the optimizer
    load_rng: bool = True
    ckpt_format: str = "torch_dist"
    auto_detect_ckpt_format: bool = False
    export_te_mcore_model: bool = False
    export_dtype: str | None = None  # default params_dtype
    import_dtype: str | None = None  # default params_dtype
    load_format: str | None = None  # derived: "hf" or "megatron", from what --load holds
    load_iteration_dir: str | None = None  # derived: the iteration directory to load (tracker, or --ckpt-step)
    hf_model_path: str | None = None  # derived: the Hugging Face model behind the run (config, tokenizer)


@dataclass(frozen=True)
class LoggingConfig:
    """Progress, validation cadence and experiment trackers."""

    log_interval: int = 100
    eval_interval: int = 1000
    eval_iters: int = 100
    tensorboard_dir: str | None = None
    wandb_project: str = ""
    wandb_exp_name: str = ""


@dataclass(frozen=True)
class TokenizerConfig:
    tokenizer_type: str = "HuggingFaceTokenizer"
    tokenizer_model: str | None = None  # default: the Hugging Face model of --load, or the checkpoint's hf_assets/


@dataclass(frozen=True)
class RuntimeConfig:
    """Device and layer implementation; device "auto" and transformer_impl None are resolved at start-up."""

    device: str = "auto"
    transformer_impl: str | None = None
    attention_backend: str = "auto"


@dataclass(frozen=True)
class InferenceConfig:
    """generate.py and mmlu.py; absent from the other entry points' parsers, so defaults there."""

    prompt: list[str] | None = None
    prompts_file: str | None = None
    chat_template_prompts: bool = False
    no_chat_template: bool = False
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    enable_thinking: bool = False
    no_kv_cache: bool = False
    inference_batch_size: int = 1
    output: str | None = None
    mmlu_dataset: str = "cais/mmlu"
    few_shot: int = 0
    fraction: float = 1.0
    lower_bound: float | None = None
    results: str | None = None


@dataclass(frozen=True)
class QuantizationConfig:
    """quantize.py (post-training quantization with nvidia-modelopt); defaults elsewhere."""

    export_quant_cfg: str = "fp8"
    calib_size: int = 512
    calib_data_path: str | None = None
    weight_only: bool = False
    disable_qkv_quant: bool = False
    export_kv_cache_quant: bool = False
    num_first_layers_to_skip_quant: int = 0
    num_last_layers_to_skip_quant: int = 0


PACKING_ALGORITHMS = ("best_fit", "first_fit_decreasing")
DEFAULT_SPLIT = "969,30,1"  # Megatron-LM's default --split


@dataclass(frozen=True)
class DataConfig:
    """Data settings under Megatron-LM's flag dest names (`--seq-length` -> `seq_length`, ...)."""

    data_path: list[str] = field(default_factory=list)  # PATH, or PATH:N for a seeded subset of N records
    # Megatron-LM's per-split form, instead of data_path + split: each split's own sources.
    train_data_path: list[str] = field(default_factory=list)
    valid_data_path: list[str] = field(default_factory=list)
    test_data_path: list[str] = field(default_factory=list)
    multiple_validation_sets: bool = False  # each valid_data_path file validated on its own (Megatron-LM's flag)
    finetune_hf_dataset: str | None = None
    finetune_hf_dataset_split: str = "train"
    seq_length: int | None = None  # the packed length; None: nothing is packed (generation, MMLU, conversion)
    max_sample_length: int | None = None  # longest conversation kept whole (default: seq_length)
    split: str = DEFAULT_SPLIT
    seed: int = 1234
    chat_template: str | None = None
    data_format: str = "auto"  # detect per record, or one of DATA_FORMATS for every record
    skip_invalid: bool = False
    drop_long_samples: bool = False
    unmask_user: bool = False
    loss_turns: str = "all"  # all assistant turns, or the last one only (a message's own "loss" wins)
    loss_normalization: str = "token"  # token: mean over supervised tokens; sample: mean of conversations' means
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    data_cache_dir: str | None = None
    num_workers: int = 1  # --num-workers' default
    context_parallel_size: int = 1
    micro_batch_size: int = 1
    global_batch_size: int | None = None
    packing_algorithm: str = "best_fit"
    sample_limit: int | None = None  # --sample N in tools/prepare_data.py: read only the first N records
    preference: bool = False  # preference pairs (DPO): each record a chosen and a rejected sequence, packed together

    @classmethod
    def from_args(cls, args, validate: bool = True) -> DataConfig:
        """Read the attributes of an argparse namespace that exist; the rest keep their defaults."""
        values = {}
        for f in fields(cls):
            if hasattr(args, f.name) and getattr(args, f.name) is not None:
                values[f.name] = getattr(args, f.name)
        if isinstance(values.get("data_path"), str):
            values["data_path"] = values["data_path"].split()
        cfg = cls(**values)
        if validate:
            cfg.validate()
        return cfg

    @property
    def split_fractions(self) -> tuple[float, float, float]:
        return parse_split(self.split)

    @property
    def per_split(self) -> bool:
        return bool(self.train_data_path or self.valid_data_path or self.test_data_path)

    @property
    def split_paths(self) -> dict[str, list[str]]:
        return {"train": self.train_data_path, "valid": self.valid_data_path, "test": self.test_data_path}

    @property
    def sample_cap(self) -> int:
        """Conversations longer than this are truncated to it (or dropped with --drop-long-samples)."""
        return self.max_sample_length or self.seq_length

    @property
    def cp_multiple(self) -> int:
        """Each sample is padded to this many tokens: THD context parallelism cuts it into 2*CP chunks."""
        return 2 * self.context_parallel_size if self.context_parallel_size > 1 else 1

    @property
    def cache_root(self) -> str:
        return self.data_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "megatron_sft", "data")

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError("; ".join(problems))

    def problems(self, require_data: bool = True) -> list[str]:
        """Every problem of these settings, each naming its flag (require_data: a run that trains needs data)."""
        problems = self._source_problems(require_data)
        if self.seq_length is not None:  # None: nothing is packed (generation, MMLU, conversion)
            problems += self._length_problems()
        if self.data_format not in DATA_FORMATS:
            problems.append(f"--data-format {self.data_format!r} is not one of {', '.join(DATA_FORMATS)}")
        if self.packing_algorithm not in PACKING_ALGORITHMS:
            problems.append(f"packing algorithm {self.packing_algorithm!r} is not one of {PACKING_ALGORITHMS}")
        try:
            parse_split(self.split)
        except UserError as e:
            problems.append(str(e))
        return problems

    def _length_problems(self) -> list[str]:
        problems = []
        cap = self.max_sample_length
        if cap is not None and not 2 <= cap <= self.seq_length:
            problems.append(f"--max-sample-length {cap} must be between 2 and --seq-length {self.seq_length}")
        if self.seq_length < 2:
            problems.append(f"--seq-length ({self.seq_length}) must be at least 2")
        if self.context_parallel_size < 1:
            problems.append(f"--context-parallel-size ({self.context_parallel_size}) must be >= 1")
        elif self.seq_length % self.cp_multiple:
            m = self.cp_multiple
            problems.append(
                f"--seq-length ({self.seq_length}) must be a multiple of 2 x --context-parallel-size ({m}); "
                f"use {self.seq_length // m * m or m}"
            )
        return problems

    def _source_problems(self, require_data: bool) -> list[str]:
        """Megatron-LM's two ways to name data do not mix: --data-path + --split, or one path per split."""
        per_split = [f"--{s}-data-path" for s, paths in self.split_paths.items() if paths]
        if per_split:
            given = (("--data-path", self.data_path), ("--finetune-hf-dataset", self.finetune_hf_dataset),
                     ("--split", self.split != DEFAULT_SPLIT and self.split))
            mixed = [f for f, v in given if v]
            problems = [f"{' and '.join(per_split)} name each split's files: drop {' and '.join(mixed)} (or use "
                        "--data-path with --split instead)"] if mixed else []
            if not self.train_data_path:
                problems.append(f"{' and '.join(per_split)} without --train-data-path: give the training files too")
            return problems + self._validation_set_problems()
        if self.multiple_validation_sets:
            return self._validation_set_problems()
        if require_data and not self.data_path and not self.finetune_hf_dataset:
            return ["no data: give --data-path FILE [FILE ...] or --finetune-hf-dataset NAME (or --train-data-path "
                    "with --valid-data-path)"]
        return []

    def _validation_set_problems(self) -> list[str]:
        """Megatron-LM's --multiple-validation-sets: several --valid-data-path files, no weights among them."""
        if not self.multiple_validation_sets:
            return []
        paths = [t for item in self.valid_data_path for t in str(item).split()]
        if any(is_number(t) for t in paths):
            return [f"--multiple-validation-sets validates each --valid-data-path file on its own: give the files "
                    f"without weights (got {' '.join(paths)})"]
        if len(paths) < 2:
            return ["--multiple-validation-sets needs several validation files: --valid-data-path A.jsonl B.jsonl "
                    "(with --train-data-path)"]
        return []


def is_number(text: str) -> bool:
    """Whether a --data-path word is a weight (a number) rather than a path."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_split(split: str) -> tuple[float, float, float]:
    """'98,2,0' (or '98/2/0', or fewer parts) -> normalised (train, valid, test) fractions."""
    parts = [p for p in str(split).replace("/", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"--split {split!r} must be comma-separated numbers such as 98,2,0") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise UserError(f"--split {split!r} needs one to three non-negative numbers with a positive sum, e.g. 98,2,0")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


@dataclass(frozen=True)
class DpoConfig:
    """Preference training (the dpo app): the loss and the reference model."""

    dpo_loss_type: str = "sigmoid"  # sigmoid, ipo or hinge (training/dpo_loss.py)
    dpo_beta: float = 0.1
    dpo_label_smoothing: float = 0.0  # sigmoid only: conservative DPO
    dpo_sft_weight: float = 0.0  # RPO: weight of the chosen responses' NLL
    ref_load: str | None = None  # the reference model; default: the model the run starts from (--load)


@dataclass(frozen=True)
class KdConfig:
    """Knowledge distillation (finetune with a teacher): Megatron-LM's --export-kd-* flags (training/kd.py)."""

    export_kd_teacher_load: str | None = None  # the teacher: HF directory, .gguf or Megatron checkpoint; None: no KD
    export_kd_cfg: str | None = None  # YAML of Megatron-LM's distillation keys (arguments/kd.py: read_kd_cfg)
    export_kd_teacher_model_config: str | None = None  # YAML of Megatron flag names overriding the teacher's shape


SECTIONS = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "training": TrainingConfig,
    "lora": PeftConfig,
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "runtime": RuntimeConfig,
    "inference": InferenceConfig,
    "quantization": QuantizationConfig,
    "dpo": DpoConfig,
    "kd": KdConfig,
}
# Parsed, checked at parse time, and not carried: nothing after validation reads them.
NOT_CARRIED = {"truncate_long_samples"}
# Flags that shape data but belong to one section: the data section keeps a copy for the pipeline.
_SHARED = {
    "seed": "training",
    "context_parallel_size": "parallel",
    "micro_batch_size": "training",
    "global_batch_size": "training",
}


def _section_of() -> dict[str, str]:
    where: dict[str, str] = {}
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            where.setdefault(f.name, name)
    where.update(_SHARED)
    return where


SECTION_OF = _section_of()  # field name -> the section that owns it
_FIELDS = {name: {f.name for f in fields(cls)} for name, cls in SECTIONS.items()}  # a field may sit in two
# A section named like a field would hide the field from flat reads.
assert not set(SECTIONS) & set(SECTION_OF), set(SECTIONS) & set(SECTION_OF)


def _default(section: type, name: str) -> Any:
    f = section.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def field_default(name: str) -> Any:
    """The default of setting `name`: its field in the section that owns it (the one place it is written)."""
    return _default(SECTIONS[SECTION_OF[name]], name)


@dataclass(frozen=True)
class RunConfig:
    """One run's whole configuration. Built by parse_args; never edited, only replaced."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: PeftConfig = field(default_factory=PeftConfig)  # `peft` is the flag: cfg.peft is "lora" or None
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    kd: KdConfig = field(default_factory=KdConfig)
    arch_sources: dict[str, str] = field(default_factory=dict)  # architecture field -> flag, a file, or default
    notices: tuple[str, ...] = ()  # said once at start-up: flags with no effect, values turned off

    @classmethod
    def from_values(cls, values: dict[str, Any], **extra: Any) -> RunConfig:
        """Sections from flat name -> value pairs (a resolved Namespace, or a run_args.json record); names a
        section does not know are ignored, fields the values lack keep their defaults."""
        sections = {}
        for name, section in SECTIONS.items():
            if section is DataConfig:  # its own reader: lists from strings, defaults for unset values
                sections[name] = DataConfig.from_args(SimpleNamespace(**values), validate=False)
                continue
            given = {f.name: values[f.name] for f in fields(section) if f.name in values}
            # None from a flag left unset keeps a field's default (a record from an older version may lack it)
            kept = {k: v for k, v in given.items() if v is not None or _default(section, k) is None}
            sections[name] = section(**kept)
        return cls(**sections, **extra)

    @classmethod
    def from_namespace(cls, args: Namespace) -> RunConfig:
        """parse_args' last step: the resolved, derived and validated namespace, every value given a section."""
        values = vars(args)
        homeless = set(values) - set(SECTION_OF) - NOT_CARRIED - {"notices", "arch_sources"}
        if homeless:  # a value set during parsing that no section holds would be lost: a bug, not a user error
            raise RuntimeError(f"no RunConfig section holds {sorted(homeless)}; add them to megatron_sft/config.py")
        return cls.from_values(values, arch_sources=dict(args.arch_sources), notices=tuple(args.notices))

    @property
    def is_kd(self) -> bool:
        """The run distills from a teacher (--export-kd-teacher-load)."""
        return self.kd.export_kd_teacher_load is not None

    @property
    def is_lora(self) -> bool:
        """The run trains (or loads) LoRA adapters on a frozen base (--peft lora)."""
        return self.lora.peft == "lora"

    def __getattr__(self, name: str) -> Any:
        """Flat read access (`cfg.seq_length`) for scripts and tests: the value from the section owning it."""
        section = SECTION_OF.get(name)
        if section is None or name.startswith("__"):
            raise AttributeError(f"RunConfig has no field {name!r}")
        return getattr(object.__getattribute__(self, section), name)

    def replace(self, **changes: Any) -> RunConfig:
        """A new config with these fields changed, in every section that holds them (data keeps its copies)."""
        by_section: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name not in SECTION_OF:
                raise KeyError(f"RunConfig has no field {name!r}")
            for section, names in _FIELDS.items():
                if name in names:
                    by_section.setdefault(section, {})[name] = value
        new = {s: dataclasses.replace(getattr(self, s), **c) for s, c in by_section.items()}
        return dataclasses.replace(self, **new)

    def to_record(self) -> dict[str, Any]:
        """Flat, JSON-safe name -> value pairs: what run_args.json holds ({"args": record})."""
        record: dict[str, Any] = {}
        for section in SECTIONS:
            for name, value in dataclasses.asdict(getattr(self, section)).items():
                if value is None or isinstance(value, (bool, int, float, str)):
                    record.setdefault(name, value)
                elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
                    record.setdefault(name, list(value))
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RunConfig:
        """The config a run_args.json record describes (records from older versions: missing fields default)."""
        return cls.from_values(record)
