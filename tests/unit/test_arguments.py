"""Flag parsing, architecture precedence (flag > checkpoint > Megatron default), derived values, checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_sft.arguments import build_parser, parse_args
from megatron_sft.arguments.inference import add_inference_args
from megatron_sft.errors import ConfigErrors

REPO = Path(__file__).resolve().parents[2]
CONFIGS = json.loads((REPO / "tests" / "data" / "hf_model_configs.json").read_text())

# The reference tutorial's torchrun flags for Qwen3-0.6B, written out in full.
TUTORIAL = (
    "--bf16 --no-masked-softmax-fusion --disable-bias-linear --position-embedding-type rope --no-rope-fusion "
    "--normalization RMSNorm --swiglu --num-layers 28 --hidden-size 1024 --ffn-hidden-size 3072 "
    "--num-attention-heads 16 --group-query-attention --num-query-groups 8 --kv-channels 128 --qk-layernorm "
    "--seq-length 4096 --max-position-embeddings 40960 --tokenizer-type HuggingFaceTokenizer "
    "--tokenizer-model Qwen/Qwen3-0.6B --make-vocab-size-divisible-by 1187 --use-mcore-models --rotary-percent 1.0 "
    "--rotary-base 1000000 --no-bias-swiglu-fusion --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 "
    "--micro-batch-size 1 --train-samples 128000 --lr-decay-samples 128000 --lr-warmup-samples 0 --split 100,0,0 "
    "--finetune-hf-dataset Magpie-Align/Magpie-Llama-3.1-Pro-MT-300K-Filtered --lr 5.0e-6 --min-lr 1.0e-7 "
    "--lr-decay-style cosine --clip-grad 1.0 --weight-decay 0.0 --adam-beta1 0.9 --adam-beta2 0.95 "
    "--use-distributed-optimizer --no-gradient-accumulation-fusion --reset-position-ids --reset-attention-mask "
    "--eod-mask-loss --attention-dropout 0.0 --hidden-dropout 0.0 --no-check-for-nan-in-loss-and-grad "
    "--eval-iters 1 --eval-interval 1000 --save-interval 1000 --log-interval 100 --auto-detect-ckpt-format "
    "--export-te-mcore-model --finetune"
).split()


def hf_dir(tmp_path: Path, config: dict | None = None, name: str = "hf", weights: bool = True, **changes) -> Path:
    """A Hugging Face model directory: config.json (Qwen3-0.6B unless given) and a stand-in weights file."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**(config or CONFIGS["Qwen/Qwen3-0.6B"]), **changes}))
    if weights:
        (path / "model.safetensors").write_bytes(b"stand-in")
    return path


def megatron_dir(tmp_path: Path, record: dict | None, iteration: int = 100) -> Path:
    """A Megatron checkpoint root: tracker, iter_NNNNNNN/metadata.json and optionally run_args.json."""
    root = tmp_path / "ckpt"
    it = root / f"iter_{iteration:07d}"
    it.mkdir(parents=True)
    (it / "metadata.json").write_text("{}")
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    if record is not None:
        (it / "run_args.json").write_text(json.dumps({"args": record}))
    return root


def problems(argv: list[str], world_size: int = 1) -> list[str]:
    with pytest.raises(ConfigErrors) as err:
        parse_args(argv, world_size=world_size)
    return err.value.problems


def test_tutorial_command_parses_with_megatron_meanings():
    args = parse_args(TUTORIAL, world_size=1)
    assert args.add_bias_linear is False and args.masked_softmax_fusion is False
    assert args.apply_rope_fusion is False and args.bias_swiglu_fusion is False
    assert args.gradient_accumulation_fusion is False and args.check_for_nan_in_loss_and_grad is False
    assert args.group_query_attention and args.num_query_groups == 8 and args.kv_channels == 128
    assert (args.train_samples, args.lr_decay_samples, args.lr, args.split) == (128000, 128000, 5e-6, "100,0,0")
    assert args.finetune and args.export_te_mcore_model and args.use_distributed_optimizer
    assert args.params_dtype == "bf16" and args.export_dtype == "bf16"
    assert (args.data_parallel_size, args.global_batch_size, args.num_microbatches) == (1, 1, 1)
    assert args.padded_vocab_size is None  # no checkpoint: the model code pads the tokenizer's vocabulary
    assert any("--reset-position-ids" in n for n in args.notices)


def test_tutorial_command_with_the_hf_checkpoint_agrees_with_it(tmp_path):
    args = parse_args(TUTORIAL + ["--load", str(hf_dir(tmp_path))], world_size=2)
    assert args.load_format == "hf" and args.hf_model_path == str((tmp_path / "hf").resolve())
    assert args.norm_epsilon == 1e-6  # not Megatron's 1e-5: the tutorial never says it
    assert args.untie_embeddings_and_output_weights is False
    assert args.padded_vocab_size == 151936 and args.data_parallel_size == 2 and args.global_batch_size == 2


def test_dropout_and_epsilon_come_from_config_json(tmp_path):
    args = parse_args(["--load", str(hf_dir(tmp_path))])
    assert (args.attention_dropout, args.hidden_dropout, args.norm_epsilon) == (0.0, 0.0, 1e-6)
    assert args.tokenizer_model == args.hf_model_path
    assert args.arch_sources["norm_epsilon"].endswith("config.json")


def test_without_checkpoint_megatron_defaults_apply():
    args = parse_args("--num-layers 2 --hidden-size 64 --num-attention-heads 4".split())
    assert (args.attention_dropout, args.hidden_dropout, args.norm_epsilon) == (0.1, 0.1, 1e-5)
    assert (args.normalization, args.position_embedding_type, args.add_bias_linear) == (
        "LayerNorm",
        "learned_absolute",
        True,
    )
    assert (args.ffn_hidden_size, args.kv_channels, args.num_query_groups) == (256, 16, 4)
    assert args.load_format is None and args.arch_sources["num_layers"] == "flag"


@pytest.mark.parametrize(
    "flags",
    [
        ["--num-layers", "28"],
        ["--qk-layernorm"],
        ["--disable-bias-linear"],
        ["--norm-epsilon", "0.000001"],
        ["--rotary-base", "1000000"],
    ],
)
def test_flag_equal_to_checkpoint_is_fine(tmp_path, flags):
    parse_args(["--load", str(hf_dir(tmp_path))] + flags)


def test_flag_contradicting_checkpoint_names_flag_both_values_and_file(tmp_path):
    path = hf_dir(tmp_path)
    found = problems(["--load", str(path), "--num-layers", "8", "--add-qkv-bias"])
    assert len(found) == 2
    assert "--num-layers 8" in found[0] and "num_hidden_layers=28" in found[0]
    assert str(path / "config.json") in found[0].replace(str(path.resolve()), str(path))
    assert "--add-qkv-bias" in found[1] and "add_qkv_bias=false" in found[1]


def test_dropout_flag_overrides_checkpoint_with_a_notice(tmp_path):
    args = parse_args(["--load", str(hf_dir(tmp_path)), "--attention-dropout", "0.1"])
    assert args.attention_dropout == 0.1
    assert any("--attention-dropout 0.1 overrides attention_dropout=0.0" in n for n in args.notices)


def test_tp_must_divide_query_groups_listing_divisors(tmp_path):
    path = hf_dir(tmp_path, num_attention_heads=24, intermediate_size=3072, vocab_size=151935)
    found = problems(["--load", str(path), "--tensor-model-parallel-size", "3"], world_size=3)
    assert any(
        p.startswith("--tensor-model-parallel-size 3 must divide --num-query-groups 8")
        and p.endswith("use 1, 2, 4 or 8")
        for p in found
    ), found
    assert len(found) == 1, found


def test_vocab_size_not_divisible_by_tp(tmp_path):
    path = hf_dir(tmp_path, vocab_size=151937)
    found = problems(["--load", str(path), "--tensor-model-parallel-size", "2"], world_size=2)
    assert found == [
        f"vocab_size 151937 in {path.resolve() / 'config.json'} is not divisible by "
        "--tensor-model-parallel-size 2; use 1"
    ]


def test_explicit_vocab_multiple_must_divide_checkpoint_vocab(tmp_path):
    path = hf_dir(tmp_path, num_attention_heads=24, num_key_value_heads=24, intermediate_size=3072)
    found = problems(
        ["--load", str(path), "--make-vocab-size-divisible-by", "1187", "--tensor-model-parallel-size", "3"],
        world_size=3,
    )
    assert len(found) == 1 and "1187 × TP 3 = 3561 does not divide vocab_size 151936" in found[0], found
    assert "use TP 1, 2, 4, 8" in found[0]
    parse_args(
        ["--load", str(path), "--make-vocab-size-divisible-by", "1187", "--tensor-model-parallel-size", "2"],
        world_size=2,
    )


def test_world_size_not_divisible_by_model_parallel_size():
    found = problems(
        "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --tensor-model-parallel-size 2".split(), world_size=3
    )
    assert found == [
        "world size 3 is not divisible by tensor-model-parallel-size (2) × pipeline-model-parallel-size "
        "(1) × context-parallel-size (1) = 2; launch 2, 4, 6... processes"
    ]


def test_several_problems_are_reported_together(tmp_path):
    argv = [
        "--load",
        str(hf_dir(tmp_path)),
        "--num-layers",
        "4",
        "--fp16",
        "--bf16",
        "--train-iters",
        "10",
        "--train-samples",
        "10",
        "--lr",
        "1e-5",
        "--seq-length",
        "64",
        "--pipeline-model-parallel-size",
        "3",
        "--data-path",
        "chat.jsonl",
    ]
    found = problems(argv, world_size=3)
    assert len(found) == 4, found
    assert any("--num-layers 4 contradicts" in p for p in found)
    assert any("--fp16 or --bf16" in p for p in found) and any("--train-iters or --train-samples" in p for p in found)
    assert any("--pipeline-model-parallel-size 3 must divide --num-layers 4;" in p for p in found)


def test_global_batch_size_default_and_divisibility():
    base = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --micro-batch-size 2".split()
    args = parse_args(base + ["--global-batch-size", "16"], world_size=4)
    assert (args.data_parallel_size, args.num_microbatches) == (4, 2)
    assert parse_args(base, world_size=4).global_batch_size == 8
    found = problems(base + ["--global-batch-size", "10"], world_size=4)
    assert found == [
        "--global-batch-size 10 is not divisible by --micro-batch-size 2 × data-parallel size 4 = 8; use 8 or 16"
    ]


def test_expert_layout(tmp_path):
    moe = hf_dir(tmp_path, CONFIGS["Qwen/Qwen3-30B-A3B"], num_experts=6, num_experts_per_tok=2)
    args = parse_args(["--load", str(moe), "--expert-model-parallel-size", "2"], world_size=4)
    assert (args.expert_model_parallel_size, args.expert_tensor_parallel_size) == (2, 1)  # EP x ETP divides 4
    found = problems(["--load", str(moe), "--expert-model-parallel-size", "4"], world_size=4)
    assert found == [
        f"--expert-model-parallel-size 4 must divide --num-experts 6 (from {moe.resolve()}/config.json)"
        "; use 1, 2, 3 or 6"
    ]
    found = problems(
        ["--load", str(moe), "--expert-model-parallel-size", "2", "--tensor-model-parallel-size", "2"], world_size=2
    )
    assert len(found) == 1 and "2 × --expert-tensor-parallel-size 2 = 4 must divide world size 2" in found[0]


def test_pipeline_and_virtual_stages():
    base = "--num-layers 8 --hidden-size 64 --num-attention-heads 4 --pipeline-model-parallel-size 2".split()
    args = parse_args(base + ["--num-layers-per-virtual-pipeline-stage", "2"], world_size=2)
    assert args.virtual_pipeline_model_parallel_size == 2
    found = problems(base + ["--num-layers-per-virtual-pipeline-stage", "3"], world_size=2)
    assert found == [
        "--num-layers 8 is not divisible by --pipeline-model-parallel-size 2 × "
        "--num-layers-per-virtual-pipeline-stage 3 = 6"
    ]


def test_sequence_parallel_at_tp1_is_a_notice():
    args = parse_args("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --sequence-parallel".split())
    assert args.sequence_parallel is False and any("--sequence-parallel" in n for n in args.notices)


def test_sample_and_iteration_schedules_do_not_mix():
    base = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --lr 1e-5 --seq-length 32 --data-path c".split()
    found = problems(base + ["--train-samples", "100", "--lr-decay-iters", "10"])
    assert found == ["--lr-decay-iters counts iterations; with --train-samples use --lr-decay-samples"]
    assert parse_args(base + ["--train-iters", "7"]).lr_decay_iters == 7


def test_unsupported_architecture(tmp_path):
    path = hf_dir(tmp_path, architectures=["MistralForCausalLM"])
    [problem] = problems(["--load", str(path)])
    assert "MistralForCausalLM" in problem and "config.json" in problem and "Qwen3ForCausalLM" in problem


def test_llama3_rope_with_other_original_context_is_refused(tmp_path):
    config = json.loads(json.dumps(CONFIGS["meta-llama/Llama-3.1-8B-Instruct"]))
    config["rope_scaling"]["original_max_position_embeddings"] = 4096
    [problem] = problems(["--load", str(hf_dir(tmp_path, config))])
    assert "original_max_position_embeddings=4096" in problem and "config.json" in problem


def test_missing_load_path(tmp_path):
    missing = tmp_path / "nope"
    assert problems(["--load", str(missing)]) == [
        f"--load {missing}: no such directory; give a Hugging Face model directory or a Megatron checkpoint"
    ]


def test_hf_dir_without_weights(tmp_path):
    path = hf_dir(tmp_path, weights=False)
    [problem] = problems(["--load", str(path)])
    assert str(path) in problem and "no weights" in problem and "model.safetensors" in problem


def test_tracker_naming_a_missing_iteration_with_nothing_else_saved(tmp_path):
    root = megatron_dir(tmp_path, record=None)
    (root / "iter_0000100" / "metadata.json").unlink()  # iter_0000100 is incomplete too
    (root / "latest_checkpointed_iteration.txt").write_text("200")
    [problem] = problems(["--load", str(root)])
    assert str(root) in problem and "iter_0000200" in problem and "missing" in problem and "no intact" in problem


def test_tracker_naming_a_missing_iteration_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    root = megatron_dir(tmp_path, record=None)
    (root / "latest_checkpointed_iteration.txt").write_text("200")
    with pytest.raises(ConfigErrors):  # the bare checkpoint lacks the architecture flags; the choice is made first
        parse_args(["--load", str(root)], world_size=1)
    [warning] = [r.getMessage() for r in caplog.records if "newest intact" in r.getMessage()]
    assert "iter_0000200 is missing" in warning and "loading iter_0000100" in warning and "--ckpt-step" in warning


def test_megatron_checkpoint_record_is_inherited_and_checked(tmp_path):
    record = {
        "num_layers": 4,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "norm_epsilon": 1e-6,
        "normalization": "RMSNorm",
        "hf_model_path": "/models/qwen",
        "padded_vocab_size": 1000,
    }
    root = megatron_dir(tmp_path, record)
    args = parse_args(["--load", str(root)])
    assert (args.load_format, args.num_layers, args.norm_epsilon, args.normalization) == (
        "megatron",
        4,
        1e-6,
        "RMSNorm",
    )
    assert args.hf_model_path == "/models/qwen" and args.padded_vocab_size == 1000
    assert args.load_iteration_dir == str(root / "iter_0000100")
    [problem] = problems(["--load", str(root), "--hidden-size", "128"])
    assert "--hidden-size 128 contradicts hidden_size=64" in problem and "run_args.json" in problem


def test_megatron_checkpoint_without_record_uses_flags(tmp_path):
    root = megatron_dir(tmp_path, record=None)
    args = parse_args(["--load", str(root), "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4"])
    assert args.load_format == "megatron" and args.norm_epsilon == 1e-5


def test_pretrained_model_path_when_load_is_fresh(tmp_path):
    args = parse_args(["--load", str(tmp_path / "run"), "--pretrained-model-path", str(hf_dir(tmp_path))])
    assert args.load_format == "hf" and args.num_layers == 28
    assert args.hf_model_path == str((tmp_path / "hf").resolve())


def test_parser_errors_are_config_errors():
    with pytest.raises(ConfigErrors, match="unrecognized arguments: --bogus"):
        parse_args(["--bogus"])
    with pytest.raises(ConfigErrors, match="not allowed with argument"):
        parse_args("--num-layers 2 --truncate-long-samples --drop-long-samples".split())


def test_generation_flags_only_with_the_inference_group():
    base = "--num-layers 2 --hidden-size 64 --num-attention-heads 4".split()
    with pytest.raises(ConfigErrors, match="--temperature"):
        parse_args(base + ["--temperature", "0.7"])
    args = parse_args(base + ["--temperature", "0.7", "--prompt", "a", "--prompt", "b"], extra=[add_inference_args])
    assert args.temperature == 0.7 and args.prompt == ["a", "b"] and args.mmlu_dataset == "cais/mmlu"
    assert "--max-new-tokens" in build_parser([add_inference_args]).format_help()


def test_parsing_imports_no_heavy_module(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from megatron_sft.arguments import parse_args
        parse_args(["--load", {str(hf_dir(tmp_path))!r}, "--seq-length", "64"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("torch", "megatron", "modelopt", "transformers", "transformer_engine"))
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def run_entry(body: str, rank: str | None) -> subprocess.CompletedProcess:
    code = f"from megatron_sft.cli import run_main\nfrom megatron_sft.arguments import parse_args\n{body}"
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    if rank is not None:
        env["RANK"] = rank
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)


def test_run_main_prints_one_line_per_problem_without_traceback():
    out = run_entry("run_main(lambda: parse_args(['--load', '/nope/x']))", rank=None)
    assert out.returncode == 2
    assert out.stderr == (
        "error: --load /nope/x: no such directory; give a Hugging Face model directory or a Megatron checkpoint\n"
    )
    out = run_entry(
        "run_main(lambda: parse_args('--num-layers 2 --fp16 --bf16 --train-iters 1 --train-samples 1'.split()))",
        rank="0",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) >= 4 and all(line.startswith("error: ") for line in lines), lines


def test_run_main_is_silent_on_other_ranks_and_still_exits_2():
    out = run_entry("run_main(lambda: parse_args(['--load', '/nope/x']))", rank="1")
    assert (out.returncode, out.stderr, out.stdout) == (2, "", "")


def test_run_main_lets_bugs_through():
    out = run_entry("run_main(lambda: 1 / 0)", rank=None)
    assert out.returncode == 1 and "ZeroDivisionError" in out.stderr and "Traceback" in out.stderr


def test_warmup_must_be_shorter_than_decay():
    with pytest.raises(ConfigErrors, match="--lr-warmup-iters 10 must be shorter"):
        parse_args(["--train-iters", "10", "--lr-warmup-iters", "10", "--lr", "1e-3", "--seq-length", "32"])


ARCH = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64", "--lr", "1e-4"]
DATA = ["--data-path", "chat.jsonl"]


def test_per_split_data_paths_do_not_mix_with_data_path_and_split():
    found = problems(ARCH + ["--train-iters", "2", "--data-path", "a.jsonl", "--split", "90,10,0",
                             "--train-data-path", "t.jsonl", "--valid-data-path", "v.jsonl"])
    assert found == ["--train-data-path and --valid-data-path name each split's files: drop --data-path and --split "
                     "(or use --data-path with --split instead)"]
    assert problems(ARCH + ["--train-iters", "2", "--valid-data-path", "v.jsonl"]) == [
        "--valid-data-path without --train-data-path: give the training files too"]
    args = parse_args(ARCH + ["--train-iters", "2", "--train-data-path", "t.jsonl", "--valid-data-path", "v.jsonl"])
    assert args.data.per_split and args.train_data_path == ["t.jsonl"]  # --split does not apply
    assert parse_args(ARCH + ["--train-iters", "2", "--data-path", "a.jsonl"]).split == "969,30,1"


def test_train_epochs_replace_iterations_or_samples():
    found = problems(ARCH + DATA + ["--train-epochs", "2", "--train-iters", "5", "--lr-warmup-samples", "3"])
    assert "give --train-iters or --train-samples or --train-epochs, not --train-iters and --train-epochs" in found
    assert any(p.startswith("--lr-warmup-samples counts samples; with --train-epochs use") for p in found)
    assert problems(ARCH + DATA + ["--train-epochs", "0"]) == ["--train-epochs 0 must be at least 1"]
    assert problems(ARCH + DATA + ["--train-epochs", "1", "--max-sample-length", "128"]) == [
        "--max-sample-length 128 must be between 2 and --seq-length 64"]


@pytest.mark.parametrize("flags,needle", [
    (["--attention-backend", "flash"], "--attention-backend flash names a Transformer Engine kernel"),
    (["--attention-backend", "local", "--context-parallel-size", "2"], "has no context parallelism"),
    (["--context-parallel-size", "2", "--cp-comm-type", "p2p"], "--cp-comm-type p2p: the packed attention"),
])
def test_attention_backend_and_cp_comm_type_are_checked(flags, needle):
    found = problems(ARCH + DATA + ["--train-iters", "2"] + flags, world_size=2)
    assert len(found) == 1 and needle in found[0], found


def test_cp_comm_type_without_context_parallelism_is_a_notice():
    args = parse_args(ARCH + DATA + ["--train-iters", "2", "--cp-comm-type", "allgather"])
    assert "--cp-comm-type allgather has no effect with --context-parallel-size 1" in args.notices


def test_moe_training_layouts_megatron_core_gets_wrong_are_refused(tmp_path):
    moe = hf_dir(tmp_path, CONFIGS["Qwen/Qwen3-30B-A3B"], num_experts=6, num_experts_per_tok=2)
    train = ["--load", str(moe), "--train-iters", "3", "--lr", "1e-4", "--seq-length", "64", "--data-path",
             str(tmp_path / "x.jsonl")]
    (tmp_path / "x.jsonl").write_text("")
    tp2 = ["--tensor-model-parallel-size", "2"]
    # TP > 1 without sequence parallelism: Megatron-Core raises inside the first MoE forward
    assert any("needs --sequence-parallel" in p for p in problems(train + tp2, world_size=2))
    # EP 1 with ETP != TP: expert gradients are reduced like dense ones and the TP ranks' copies drift apart
    found = problems(train + tp2 + ["--sequence-parallel", "--expert-tensor-parallel-size", "1"], world_size=2)
    assert len(found) == 1 and "--expert-tensor-parallel-size 1 differs from --tensor-model-parallel-size 2" in found[0]
    parse_args(train + tp2 + ["--sequence-parallel", "--expert-tensor-parallel-size", "1",
                              "--expert-model-parallel-size", "2"], world_size=2)  # EP 2: accepted
    parse_args(["--load", str(moe)] + tp2 + ["--expert-tensor-parallel-size", "1"], world_size=2)  # inference


NANO30 = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B"


def test_hybrid_layouts_the_mamba_shapes_refuse_at_parse_time(tmp_path):
    """Nemotron 3 Nano: 64 Mamba heads in 8 groups; TP must split both, TP x CP the heads; one line each."""
    load = str(hf_dir(tmp_path, CONFIGS[NANO30]))
    found = problems(["--load", load, "--tensor-model-parallel-size", "16", "--sequence-parallel"], world_size=16)
    assert any(p.startswith("TP 16 must divide --mamba-num-groups 8 (from ") for p in found), found
    found = problems(["--load", load, "--context-parallel-size", "128"], world_size=128)
    assert any(p.startswith("TP x CP = 128 must divide --mamba-num-heads 64 (from ") for p in found), found
    assert parse_args(["--load", load, "--tensor-model-parallel-size", "2", "--sequence-parallel"],
                      world_size=2).mamba_num_heads == 64


def test_hybrid_pattern_checks(tmp_path):
    base = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--mamba-num-heads", "4", "--mamba-num-groups", "2", "--mamba-head-dim", "32"]
    assert any("has symbols ['X']" in p for p in problems(base + ["--hybrid-override-pattern", "M*MX"]))
    assert any("has 3 layers; --num-layers is 4" in p for p in problems(base + ["--hybrid-override-pattern", "M*M"]))
    assert any("has MoE layers (E); give --num-experts" in p
               for p in problems(base + ["--hybrid-override-pattern", "M*ME"]))
    assert any("--attention-backend local passes packed samples as an attention mask" in p
               for p in problems(base + ["--hybrid-override-pattern", "M*M-", "--attention-backend", "local"]))
    assert any("needs --hybrid-override-pattern" in p for p in problems(base + ["--is-hybrid-model"]))
    args = parse_args(base + ["--hybrid-override-pattern", "M*M-"])
    assert args.hybrid_override_pattern == "M*M-" and args.mamba_num_heads == 4


def test_mamba_lora_targets_need_mamba_layers(tmp_path):
    load = str(hf_dir(tmp_path))
    found = problems(["--load", load, "--peft", "lora", "--lora-target-modules", "linear_qkv", "in_proj"])
    assert any(p.startswith("--lora-target-modules in_proj: this model has no Mamba layers") for p in found), found


def test_hybrid_lora_defaults_add_in_proj(tmp_path):
    args = parse_args(["--load", str(hf_dir(tmp_path, CONFIGS[NANO30])), "--peft", "lora"])
    assert args.lora_target_modules == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "in_proj"]
