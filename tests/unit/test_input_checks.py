"""What the flags point at, checked before any model is built: tokenizer, output directory, sample length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from megatron_sft.arguments import parse_args
from tests.unit.test_arguments import REPO, hf_dir, megatron_dir, problems

RECORD = {"num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "norm_epsilon": 1e-6,
          "normalization": "RMSNorm", "padded_vocab_size": 1000}


def tokenizer_dir(tmp_path):
    path = tmp_path / "tok"
    path.mkdir()
    (path / "tokenizer_config.json").write_text("{}")
    return path


def test_missing_tokenizer_directory(tmp_path):
    [problem] = problems(["--load", str(hf_dir(tmp_path)), "--tokenizer-model", "/nonexistent/tok"])
    assert problem.startswith("--tokenizer-model /nonexistent/tok: no such directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    [problem] = problems(["--load", str(hf_dir(tmp_path, name="hf2")), "--tokenizer-model", str(empty)])
    assert "no tokenizer files there" in problem


def test_hub_names_and_tokenizer_directories_are_accepted(tmp_path):
    for value in ("Qwen/Qwen3-0.6B", str(tokenizer_dir(tmp_path))):
        assert parse_args(["--load", str(hf_dir(tmp_path, name=f"hf{len(value)}")), "--tokenizer-model", value])


def test_save_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    [problem] = problems(["--load", str(hf_dir(tmp_path)), "--save", str(blocker / "ckpt")])
    assert "cannot be created" in problem and str(blocker) in problem
    [problem] = problems(["--load", str(hf_dir(tmp_path, name="hf2")), "--save", str(blocker)])
    assert "is a file" in problem


def test_save_over_the_model_the_run_starts_from(tmp_path):
    hf = hf_dir(tmp_path)
    [problem] = problems(["--load", str(hf), "--save", str(hf)])
    assert "is the model this run starts from" in problem
    ckpt = megatron_dir(tmp_path, RECORD)  # weights only: a new run would write over it
    [problem] = problems(["--load", str(ckpt), "--save", str(ckpt)])
    assert "is the model this run starts from" in problem
    (ckpt / "iter_0000100" / "train_state.json").write_text(json.dumps({"iteration": 100}))
    assert parse_args(["--load", str(ckpt), "--save", str(ckpt)])  # a resume saves where it loads
    [problem] = problems(["--load", str(ckpt), "--save", str(ckpt), "--finetune"])
    assert "is the model this run starts from" in problem


def test_samples_longer_than_the_model_positions(tmp_path):
    hf = hf_dir(tmp_path, max_position_embeddings=2048)
    [problem] = problems(["--load", str(hf), "--seq-length", "4096"])
    assert "--seq-length 4096 lets one sample reach 4096 tokens" in problem and "--max-sample-length 2048" in problem
    assert parse_args(["--load", str(hf), "--seq-length", "4096", "--max-sample-length", "2048"])


def test_finetune_py_reports_a_bad_tokenizer_in_one_line_fast(tmp_path):
    hf = hf_dir(tmp_path)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "finetune.py"), "--load", str(hf),
                           "--tokenizer-model", "/nonexistent/tok", "--data-path", "x.jsonl"],
                          capture_output=True, text=True, env={**os.environ, "WORLD_SIZE": "1"}, timeout=60)
    seconds = time.perf_counter() - t0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "--tokenizer-model /nonexistent/tok" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and seconds < 3, seconds


def test_flags_that_cannot_be_honoured_are_refused_and_no_ops_said(tmp_path):
    hf = str(hf_dir(tmp_path))
    for flag in ("--no-load-optim", "--no-load-rng"):
        [problem] = problems(["--load", hf, flag])
        assert problem.startswith(f"{flag}: a resume always restores") and "--finetune" in problem
    args = parse_args(["--load", hf, "--auto-detect-ckpt-format", "--export-te-mcore-model",
                       "--no-masked-softmax-fusion"])
    said = " ".join(args.notices)
    assert all(f in said for f in ("--auto-detect-ckpt-format", "--export-te-mcore-model", "--no-masked-softmax"))


def test_resume_at_another_layout_is_refused_before_any_model(tmp_path):
    """The optimizer state reshards over DP only: a resume at another TP/PP/EP/CP is one line at parse time."""
    ckpt = megatron_dir(tmp_path, RECORD)
    state = {"iteration": 100, "layout": {"tp": 2, "pp": 1, "dp": 1, "ep": 1, "cp": 1}}
    (ckpt / "iter_0000100" / "train_state.json").write_text(json.dumps(state))
    train = ["--train-iters", "200", "--lr", "1e-4", "--seq-length", "64", "--data-path", "chat.jsonl"]
    [problem] = problems(["--load", str(ckpt), "--save", str(ckpt), *train])
    assert "saved at TP=2 PP=1 EP=1 CP=1, resumed at TP=1 PP=1 EP=1 CP=1" in problem and "--finetune" in problem
    assert parse_args(["--load", str(ckpt), "--tensor-model-parallel-size", "2", *train], world_size=4)  # DP 2
    assert parse_args(["--load", str(ckpt), "--finetune", *train])  # a new run from its weights: any layout
    assert parse_args(["--load", str(ckpt)])  # generation, MMLU, conversion: any layout


def test_convert_refuses_to_write_into_its_input(tmp_path):
    from megatron_sft.arguments.inputs import check_not_converting_in_place
    from megatron_sft.errors import UserError

    ckpt = megatron_dir(tmp_path, RECORD)
    (ckpt / "iter_0000100" / "train_state.json").write_text(json.dumps({"iteration": 100}))
    args = parse_args(["--load", str(ckpt), "--save", str(ckpt)])  # a resume may; a conversion may not
    try:
        check_not_converting_in_place(args)
    except UserError as err:
        assert str(err).startswith(f"--save {ckpt} is --load")
    else:
        raise AssertionError("converting a checkpoint into itself was accepted")
