"""Bad input to the shell scripts: one clear line on stderr, exit 2, in under 3 seconds, before torchrun or any
entry script starts (so before any model or torch.distributed).

`torchrun` and `python` on PATH are replaced by stubs that record being called; the stub python hands
`python -m megatron_sft.launch` (the scripts' planner) to the real interpreter, so a test also proves that
nothing was launched. The multi-node launch line and the Slurm example are checked the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workflow.helpers import EXAMPLES, REPO

STUB = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >> "{log}"
"""
PYTHON_STUB = """#!/usr/bin/env bash
[[ "$1 $2" == "-m megatron_sft.launch" ]] && exec "{python}" "$@"
printf '%s\\n' "$(basename "$0") $*" >> "{log}"
"""
FACTS = json.loads((REPO / "tests" / "data" / "hf_model_configs.json").read_text())


def fake_hf_dir(root: Path, model: str) -> Path:
    """The model's real config.json and an empty weights file: the launch reads only the config."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({k: v for k, v in FACTS[model].items() if k != "qkv_bias"}))
    (root / "model.safetensors").write_bytes(b"")
    return root


@pytest.fixture()
def sandbox(tmp_path):
    """A work dir with a fake HF model and dataset, and a PATH whose python/torchrun only record their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "launched.txt"
    for name in ("python", "python3", "torchrun", "srun"):
        stub = PYTHON_STUB if name.startswith("python") else STUB
        (bin_dir / name).write_text(stub.format(log=log, python=sys.executable))
        (bin_dir / name).chmod(0o755)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    (bin_dir / "scontrol").chmod(0o755)
    fake_hf_dir(tmp_path / "work" / "tiny" / "hf", "Qwen/Qwen3-0.6B")
    (tmp_path / "work" / "tiny" / "train.jsonl").write_text("{}\n")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "MLM_WORK_DIR": str(tmp_path / "work"),
    }
    return {"env": env, "log": log, "root": tmp_path}


def run(script: str, model: str, sandbox: dict, **env: str) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(EXAMPLES / script), model],
        capture_output=True,
        text=True,
        env={**sandbox["env"], **env},
        cwd=sandbox["root"],
        timeout=60,
        check=False,
    )
    proc.seconds = time.perf_counter() - start
    return proc


def launched(sandbox: dict) -> list[str]:
    return sandbox["log"].read_text().splitlines() if sandbox["log"].exists() else []


def assert_one_line_error(proc: subprocess.CompletedProcess, sandbox: dict, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.seconds < 3, f"the error took {proc.seconds:.1f} s"
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert launched(sandbox) == [], "a process was launched before the error"
    return lines[0]


def test_unknown_model_lists_the_configs(sandbox):
    line = assert_one_line_error(
        run("finetune.sh", "Qwen/Qwen9-1B", sandbox), sandbox, "unknown MODEL 'Qwen/Qwen9-1B'"
    )
    for model in ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-30B-A3B", "meta-llama/Llama-3.1-8B-Instruct", "tiny"):
        assert model in line
    assert "arguments" not in line
    for script in ("generate.sh", "mmlu.sh", "convert.sh"):
        assert_one_line_error(run(script, "nope", sandbox), sandbox, "unknown MODEL 'nope'")
    assert_one_line_error(run("finetune.sh", "", sandbox), sandbox, "usage: finetune.sh MODEL")


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"TP": "2", "EP": "4"}, "--expert-model-parallel-size 4 needs a mixture-of-experts model"),
        ({"PP": "3"}, "--pipeline-model-parallel-size 3 must divide --num-layers 28 (from "),
        ({"MLM_EXTRA_ARGS": "--no-load-optim"}, "--no-load-optim: a resume always restores the optimizer"),
        ({"MLM_EXTRA_ARGS": "--tokenizer-model /no/tok"}, "--tokenizer-model /no/tok: no such directory"),
        ({"TP": "2", "NPROC_PER_NODE": "3"}, "= 2 processes, but NNODES x NPROC_PER_NODE = 1 x 3 = 3"),
        ({"TP": "2", "PP": "2", "NNODES": "3"}, "4 processes do not split evenly over NNODES=3"),
        ({"TP": "two"}, "TP=two: must be a positive integer"),
        ({"DP": "0"}, "DP=0: must be a positive integer"),
        ({"NNODES": "2", "NPROC_PER_NODE": "1", "DP": "2"}, "set MASTER_ADDR"),
        ({"HF_MODEL_CKPT": "/no/such/model"}, "HF_MODEL_CKPT=/no/such/model: no such directory"),
        ({"DATASET": "/no/such/data.jsonl"}, "DATASET=/no/such/data.jsonl: no such file"),
        ({"DATASET": "./chat.jsonl"}, "DATASET=./chat.jsonl: no such file"),
        ({"MLM_MODEL_CKPT": "/no/ckpt"}, "MLM_MODEL_CKPT=/no/ckpt: no such directory"),
        ({"MLM_RESUME": "yes"}, "MLM_RESUME=yes: use 1"),
        ({"MLM_DATA_ARGS": "--train-iters 4 --data-path x.jsonl", "DATASET": "y.jsonl"}, "keep one"),
    ],
)
def test_finetune_refuses_bad_settings(sandbox, env, needle):
    assert_one_line_error(run("finetune.sh", "tiny", sandbox, **env), sandbox, needle)


def test_finetune_refuses_to_save_over_its_input(sandbox):
    hf = sandbox["env"]["MLM_WORK_DIR"] + "/tiny/hf"
    assert_one_line_error(
        run("finetune.sh", "tiny", sandbox, MLM_MODEL_SAVE=hf), sandbox, "is the model this run starts from"
    )


def test_finetune_refuses_a_save_directory_it_cannot_create(sandbox):
    blocker = sandbox["root"] / "a_file"
    blocker.write_text("x")
    assert_one_line_error(run("finetune.sh", "tiny", sandbox, MLM_MODEL_SAVE=str(blocker / "run")), sandbox,
                          f"--save {blocker}/run cannot be created: {blocker} is a file")


def test_finetune_refuses_a_save_directory_root_cannot_create_either(sandbox):
    """Permission bits say yes to root under /proc; only trying says no."""
    assert_one_line_error(run("finetune.sh", "tiny", sandbox, MLM_MODEL_SAVE="/proc/megatron_sft/run"), sandbox,
                          "--save /proc/megatron_sft/run cannot be written: ")


def test_finetune_refuses_samples_longer_than_the_model_positions(sandbox):
    proc = run("finetune.sh", "tiny", sandbox, MLM_EXTRA_ARGS="--seq-length 65536")
    assert_one_line_error(proc, sandbox, "--seq-length 65536 lets one sample reach 65536 tokens, past the model's "
                                         "--max-position-embeddings 40960")


def test_finetune_refuses_to_resume_at_another_layout(sandbox):
    """MLM_MODEL_SAVE holds a run saved at TP=1; resuming it at TP=2 is refused before anything starts."""
    save = sandbox["root"] / "run"
    it = save / "iter_0000005"
    it.mkdir(parents=True)
    (save / "latest_checkpointed_iteration.txt").write_text("5")
    (it / "metadata.json").write_text("{}")
    (it / "train_state.json").write_text(json.dumps({"iteration": 5, "layout": {"tp": 1, "pp": 1, "dp": 1, "ep": 1,
                                                                                 "cp": 1}}))
    fact = FACTS["Qwen/Qwen3-0.6B"]
    record = {"num_layers": fact["num_hidden_layers"], "hidden_size": fact["hidden_size"],
              "num_attention_heads": fact["num_attention_heads"], "padded_vocab_size": fact["vocab_size"]}
    (it / "run_args.json").write_text(json.dumps({"args": record}))
    proc = run("finetune.sh", "tiny", sandbox, MLM_MODEL_SAVE=str(save), TP="2")
    assert_one_line_error(proc, sandbox, "saved at TP=1 PP=1 EP=1 CP=1, resumed at TP=2 PP=1 EP=1 CP=1")


def test_experts_that_do_not_fit_the_ranks(sandbox):
    hf = fake_hf_dir(sandbox["root"] / "moe", "Qwen/Qwen3-30B-A3B")
    proc = run("finetune.sh", "Qwen/Qwen3-30B-A3B", sandbox, HF_MODEL_CKPT=str(hf), DATASET=str(hf / "config.json"),
               TP="1", PP="1", DP="2", EP="4", ETP="1")
    assert_one_line_error(proc, sandbox, "--expert-model-parallel-size 4 × --expert-tensor-parallel-size 1 = 4 "
                                         "must divide world size 2")


def test_real_model_without_a_local_checkpoint_says_how_to_get_one(sandbox):
    assert_one_line_error(
        run("finetune.sh", "Qwen/Qwen3-0.6B", sandbox), sandbox, "set HF_MODEL_CKPT", "hf download Qwen/Qwen3-0.6B"
    )


@pytest.mark.parametrize(
    "script, env, needle",
    [
        ("generate.sh", {"PROMPTS_PATH": "/no/prompts.jsonl"}, "PROMPTS_PATH=/no/prompts.jsonl: no such file"),
        ("generate.sh", {"MLM_MODEL_SAVE": "/no/run"}, "MLM_MODEL_SAVE=/no/run: no complete checkpoint"),
        ("mmlu.sh", {"MMLU_DATASET": "/no/mmlu"}, "MMLU_DATASET=/no/mmlu: no such directory"),
        ("mmlu.sh", {"MLM_MODEL_CKPT": "/no/ckpt"}, "MLM_MODEL_CKPT=/no/ckpt: no such directory"),
        ("convert.sh", {"MLM_MODEL_CKPT": "/tmp"}, "MLM_MODEL_CKPT=/tmp: not a complete Megatron checkpoint"),
        ("convert.sh", {"HF_MODEL_CKPT": "/no/model"}, "HF_MODEL_CKPT=/no/model: no such directory"),
        ("convert.sh", {"TP": "2", "EP": "2"}, "needs a mixture-of-experts model"),
        ("generate.sh", {"MLM_EXTRA_ARGS": "--no-such-flag"}, "unrecognized arguments: --no-such-flag"),
    ],
)
def test_other_scripts_refuse_bad_settings(sandbox, script, env, needle):
    assert_one_line_error(run(script, "tiny", sandbox, **env), sandbox, needle)


def test_settings_block_and_launch_line(sandbox):
    proc = run("finetune.sh", "tiny", sandbox, TP="2", MLM_EXTRA_ARGS="--seed 7")
    assert proc.returncode == 0, proc.stderr
    block = proc.stdout
    assert "== finetune.sh tiny (conf/tiny.sh)" in block
    assert "TP=2 PP=1 CP=1 DP=1 EP=1 ETP=2 -> 2 processes (TP x PP x CP x DP) on 1 node(s)  (TP: env)" in block
    assert "MLM_OPTIM_ARGS  --lr 3e-3" in block and "(conf)" in block
    assert proc.stderr == ""
    [call] = launched(sandbox)
    assert call.startswith(f"python -m megatron_sft.launch.torchrun --standalone --nproc_per_node=2 "
                           f"{REPO}/examples/finetune.py ")
    args = call.split()
    assert args[args.index("--tensor-model-parallel-size") + 1] == "2"
    assert args[args.index("--load") + 1].endswith("/tiny/hf") and "--finetune" in args
    assert args[args.index("--save") + 1] == sandbox["env"]["MLM_WORK_DIR"] + "/tiny_sft"
    assert args[args.index("--data-path") + 1].endswith("/tiny/train.jsonl")
    assert args[-2:] == ["--seed", "7"], "MLM_EXTRA_ARGS come last, so they win"


def test_epochs_replace_the_run_length_of_the_conf(sandbox):
    proc = run("finetune.sh", "tiny", sandbox, EPOCHS="2")
    assert proc.returncode == 0, proc.stderr
    assert "EPOCHS          2  (env: MLM_DATA_ARGS becomes '--split 98,2,0 --train-epochs 2')" in proc.stdout
    [call] = launched(sandbox)
    args = call.split()
    assert args[args.index("--train-epochs") + 1] == "2" and "--train-iters" not in args
    sandbox["log"].unlink()
    assert_one_line_error(run("finetune.sh", "tiny", sandbox, EPOCHS="two"), sandbox, "EPOCHS=two")


def test_save_hf_setting(sandbox):
    for value, flags in (("1", ["--save-hf"]), ("final", ["--save-hf", "final"])):
        proc = run("finetune.sh", "tiny", sandbox, SAVE_HF=value)
        assert proc.returncode == 0, proc.stderr
        [call] = launched(sandbox)
        sandbox["log"].unlink()
        args = call.split()
        assert args[args.index("--save-hf"):args.index("--save-hf") + len(flags)] == flags
    assert "--save-hf" not in run_and_call(sandbox)
    assert_one_line_error(run("finetune.sh", "tiny", sandbox, SAVE_HF="yes"), sandbox, "SAVE_HF=yes")


def run_and_call(sandbox) -> str:
    assert run("finetune.sh", "tiny", sandbox).returncode == 0
    [call] = launched(sandbox)
    sandbox["log"].unlink()
    return call


def test_multi_node_rendezvous_line(sandbox):
    proc = run(
        "finetune.sh",
        "tiny",
        sandbox,
        TP="2",
        DP="2",
        NNODES="2",
        NODE_RANK="1",
        MASTER_ADDR="node-a",
        MASTER_PORT="6000",
    )
    assert proc.returncode == 0, proc.stderr
    [call] = launched(sandbox)
    assert call.startswith(
        "python -m megatron_sft.launch.torchrun --nnodes=2 --node_rank=1 --nproc_per_node=2 --master_addr=node-a "
        "--master_port=6000 "
    )


def test_slurm_example_starts_one_torchrun_per_node(sandbox):
    """sbatch's script with a fake srun: it must hand finetune.sh the node count, GPUs per node and master."""
    env = {
        **sandbox["env"],
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_SUBMIT_DIR": str(REPO),
    }
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "slurm" / "finetune.sbatch"), "Qwen/Qwen3-32B"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [call] = launched(sandbox)
    assert call.startswith(
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 env NNODES=2 NPROC_PER_NODE=8 "
        "MASTER_ADDR=node-a MASTER_PORT=29500 bash -c"
    )
    assert call.endswith(f"{REPO}/examples/finetune.sh Qwen/Qwen3-32B")
    # What srun would run on node 1 of 2: Qwen3-32B's conf (TP=8 PP=2) fills 2 nodes x 8 GPUs.
    hf = fake_hf_dir(sandbox["root"] / "qwen3_32b", "Qwen/Qwen3-32B")
    node = run(
        "finetune.sh",
        "Qwen/Qwen3-32B",
        sandbox,
        NNODES="2",
        NPROC_PER_NODE="8",
        MASTER_ADDR="node-a",
        NODE_RANK="1",
        HF_MODEL_CKPT=str(hf),
        DATASET=str(hf / "config.json"),
    )
    assert node.returncode == 0, node.stderr
    assert launched(sandbox)[-1].startswith(
        "python -m megatron_sft.launch.torchrun --nnodes=2 --node_rank=1 --nproc_per_node=8 ")
