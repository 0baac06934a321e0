"""examples/dpo.sh on the embedded tiny model: it starts from finetune.sh's run by default, computes the reference
log-probabilities once, trains, and a second call has nothing to do (and computes nothing again)."""

from __future__ import annotations

import json
import random

import pytest

from tests.workflow.helpers import build_embedded_default, run_script, script_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("dpo_workflow")
    build_embedded_default(work)
    rng = random.Random(0)
    data = work / "prefs.jsonl"
    with open(data, "w") as f:
        for _ in range(40):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"prompt": f"reverse: {word}", "chosen": word[::-1], "rejected": word + word[0]})
                    + "\n")
    sft = run_script("finetune", "tiny", script_env(work, MLM_DATA_ARGS="--train-iters 2 --split 100,0,0",
                                                    MLM_EVAL_ARGS="--eval-iters 0 --log-interval 1"))
    env = script_env(work, DATASET=str(data), DPO_BETA="0.2",
                     MLM_DATA_ARGS="--train-iters 3 --split 90,10,0", MLM_EXTRA_ARGS="--log-interval 1")
    return {"work": work, "sft": sft, "first": run_script("dpo", "tiny", env), "again": run_script("dpo", "tiny", env)}


def test_dpo_starts_from_the_fine_tuned_run_and_trains(runs):
    out = runs["first"].stdout + runs["first"].stderr
    assert f"{runs['work']}/tiny_sft (the fine-tuned run" in out
    assert "--dpo-beta 0.2" in out and "reference log-probs: computing them with" in out
    assert "iteration 3/3 | loss" in out and "rewards/margins" in out
    assert (runs["work"] / "tiny_dpo" / "iter_0000003" / "train_state.json").is_file()


def test_a_second_call_has_nothing_to_do(runs):
    out = runs["again"].stdout + runs["again"].stderr
    assert "resuming" in out and "nothing to train" in out
    assert "reference log-probs: computing" not in out


def test_dpo_from_python(runs):
    """dpo() with sft()'s keywords (effective_batch_size counts pairs) and TRL's beta; the result's figures."""
    from megatron_sft import dpo

    result = dpo(model_path=str(runs["work"] / "tiny_sft"), data_path=str(runs["work"] / "prefs.jsonl"),
                 ckpt_output_dir=str(runs["work"] / "api_dpo"), num_epochs=1, effective_batch_size=8,
                 max_seq_len=128, learning_rate=1e-3, beta=0.2, quiet=True)
    assert result.iterations >= 3 and result.final_loss < 0.6931
    assert result.metrics["rewards/accuracies"] > 0.5 and "rewards/margins" in result.metrics


def test_demo_dpo_runs_after_the_demo(tmp_path):
    """examples/demo_dpo.sh, cut down (20 fine-tuning and 20 DPO steps, no minimum): it runs demo.sh first, builds
    the preference task, trains DPO through dpo.sh and prints both before/after figures. The full-length figures
    (45% -> 100% preference, reversal 50/50 kept) are in docs/dpo.md."""
    import re
    import subprocess

    from tests.workflow.helpers import EXAMPLES

    env = script_env(tmp_path, MLM_DATA_ARGS="--train-iters 20 --split 98,2,0", DEMO_MIN_EXACT="0",
                     DEMO_MIN_PREFERENCE="0",
                     MLM_EVAL_ARGS="--eval-interval 1000 --eval-iters 1 --save-interval 1000 --log-interval 10")
    proc = subprocess.run(["bash", str(EXAMPLES / "demo_dpo.sh")], capture_output=True, text=True, env=env, cwd="/",
                          timeout=800, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "not there yet: running examples/demo.sh first" in out
    assert re.search(r"reversal task: exact answers on 50 held-out prompts: before \d+/50 .*, after \d+/50", out)
    assert re.search(r"preference accuracy on 100 held-out pairs .*: before \d+/100 .*, after \d+/100", out)
    pairs = [json.loads(line) for line in (tmp_path / "tiny" / "prefs.jsonl").read_text().splitlines()]
    assert all(int(p["chosen"][0]["content"]) > int(p["rejected"][0]["content"]) for p in pairs)
    assert (tmp_path / "tiny" / "dpo" / "iter_0000020" / "hf" / "config.json").is_file()
