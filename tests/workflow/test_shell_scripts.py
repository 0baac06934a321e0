"""The shell workflow for real, on the embedded default (tiny model, CPU, gloo): what each script produces.

One chain of launches, shared by the tests below (each python process costs ~15 s of imports):
  demo.sh (cut down)    build, generate before, finetune.sh (1 process), generate after, report
  finetune.sh DP=2      a second call on a copy of the demo's run: resumes it, now on 2 processes
  finetune.sh TP=2 PP=2 a fresh run from the Hugging Face model on 4 processes, with SAVE_HF=1
  convert.sh            that checkpoint -> Hugging Face at its own layout (== its --save-hf directory); the demo's
                        checkpoint -> Hugging Face (transformers loads it and answers like generate.sh), and that
                        directory -> Megatron again
  mmlu.sh               on the converted Megatron checkpoint, with the MMLU fixture
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import checkpoint_entries
from tests.workflow.helpers import EXAMPLES, REPO, run_script, script_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(900)]

DEMO_ITERS = 40
DONE = re.compile(r"done: (\d+) iterations, .* loss ([\d.]+) -> ([\d.]+)")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def tracker(root: Path) -> str:
    return (root / "latest_checkpointed_iteration.txt").read_text().strip()


def done_line(output: str) -> tuple[int, float, float]:
    found = DONE.findall(output)
    assert found, output[-3000:]
    iterations, first, last = found[-1]
    return int(iterations), float(first), float(last)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workflow")


@pytest.fixture(scope="module")
def demo(work):
    """examples/demo.sh, cut down to a few iterations, started from an unrelated directory."""
    env = script_env(
        work,
        MLM_DATA_ARGS=f"--train-iters {DEMO_ITERS} --split 98,2,0",
        DEMO_MIN_EXACT="0",
        MLM_EVAL_ARGS="--eval-interval 1000 --eval-iters 1 --save-interval 1000 --log-interval 10",
    )
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "demo.sh")], capture_output=True, text=True, env=env, cwd="/", timeout=800, check=False
    )
    assert proc.returncode == 0, f"demo.sh exited {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return {"out": proc.stdout, "tiny": work / "tiny"}


def test_demo_builds_trains_and_compares_answers(demo):
    tiny, out = demo["tiny"], demo["out"]
    iterations, first, last = done_line(out)
    assert iterations == DEMO_ITERS
    assert last < 0.8 * first, f"the loss should fall: {first} -> {last}"
    before = [json.loads(line) for line in (tiny / "before.jsonl").read_text().splitlines()]
    after = [json.loads(line) for line in (tiny / "after.jsonl").read_text().splitlines()]
    heldout = (tiny / "heldout.jsonl").read_text().splitlines()
    assert len(before) == len(after) == len(heldout) == 50
    for b, a, line in zip(before, after, heldout):
        word = json.loads(line)["messages"][0]["content"].removeprefix("reverse: ")
        assert a["reference"] == word[::-1] and a["messages"][-1]["content"] == f"reverse: {word}"
        assert b["source"] == a["source"]
    assert "exact answers on 50 held-out prompts: before" in out
    assert re.search(r"reverse: \w+ +\w+ +'", out), "the side-by-side table is printed"
    assert sum(b["completion"] == b["reference"] for b in before) == 0, "an untrained model cannot answer"


def test_demo_checkpoint_contents(demo):
    from megatron_sft.checkpointing.names import checkpoint_entries as listed

    sft = demo["tiny"] / "sft"
    assert tracker(sft) == str(DEMO_ITERS)
    it = sft / f"iter_{DEMO_ITERS:07d}"
    assert checkpoint_entries(it) == listed(training=True, save_hf=True)  # demo.sh: SAVE_HF=final
    for name in (
        "metadata.json",
        "run_args.json",
        "train_state.json",
        "hf_assets/config.json",
        "hf_assets/tokenizer.json",
        "loss_curve.png",
    ):
        assert (it / name).is_file(), name
    state = read_json(it / "train_state.json")
    assert state["iteration"] == DEMO_ITERS and state["layout"]["tp"] == 1
    run_args = read_json(it / "run_args.json")["args"]
    assert run_args["hidden_size"] == 128 and run_args["finetune"] is True
    assert Path(run_args["hf_model_path"]) == (demo["tiny"] / "hf").resolve()


@pytest.fixture(scope="module")
def resumed(demo, work):
    """A second finetune.sh call on (a copy of) the demo's run, on 2 data-parallel processes."""
    save = work / "resume_dp2"
    shutil.copytree(demo["tiny"] / "sft", save)
    env = script_env(
        work,
        DP="2",
        MLM_MODEL_SAVE=str(save),
        MLM_DATA_ARGS=f"--train-iters {DEMO_ITERS + 4} --split 98,2,0",  # the demo's data: a resume keeps it
        MLM_EVAL_ARGS="--eval-iters 0 --log-interval 1",
    )
    return {"proc": run_script("finetune", "tiny", env), "save": save}


def test_second_call_resumes_at_dp2(resumed):
    proc, save = resumed["proc"], resumed["save"]
    assert f"resuming {save} from iteration {DEMO_ITERS}" in proc.stdout
    assert "--finetune" not in proc.stdout.split("command", 1)[1].split()
    assert "torchrun --standalone --nproc_per_node=2" in proc.stdout
    assert f"resumed {save}/iter_{DEMO_ITERS:07d} at iteration {DEMO_ITERS}" in proc.stdout + proc.stderr
    logged = [int(n) for n in re.findall(r"iteration (\d+)/\d+ \|", proc.stdout + proc.stderr)]
    assert logged == list(range(DEMO_ITERS + 1, DEMO_ITERS + 5)), logged
    assert tracker(save) == str(DEMO_ITERS + 4)
    state = read_json(save / f"iter_{DEMO_ITERS + 4:07d}" / "train_state.json")
    assert state["iteration"] == DEMO_ITERS + 4 and state["layout"]["dp"] == 2
    assert state["consumed_samples"] == (DEMO_ITERS + 4) * 16


@pytest.fixture(scope="module")
def tp2pp2(demo, work):
    """A fresh run at TP=2 x PP=2 (4 processes) with SAVE_HF=1, then convert.sh on its checkpoint."""
    save, export = work / "tp2pp2", work / "tp2pp2_export"
    env = script_env(work, TP="2", PP="2", SAVE_HF="1", MLM_MODEL_SAVE=str(save), MLM_DATA_ARGS="--train-iters 3",
                     MLM_EVAL_ARGS="--eval-iters 0 --log-interval 1")
    trained = run_script("finetune", "tiny", env)
    env = script_env(work, MLM_MODEL_CKPT=str(save), EXPORT_DIR=str(export), EXPORT_DTYPE="bf16")
    return {"trained": trained, "converted": run_script("convert", "tiny", env), "save": save, "export": export}


def test_fresh_run_at_tp2_pp2(tp2pp2):
    proc, save = tp2pp2["trained"], tp2pp2["save"]
    assert "torchrun --standalone --nproc_per_node=4" in proc.stdout
    assert "imported on the fly" in proc.stdout
    iterations, first, _ = done_line(proc.stdout + proc.stderr)
    assert iterations == 3 and first > 3.0  # from the untrained model: about ln(vocabulary)
    assert tracker(save) == "3"
    it = save / "iter_0000003"
    assert read_json(it / "train_state.json")["layout"] == {"tp": 2, "pp": 2, "dp": 1, "ep": 1, "cp": 1}
    assert read_json(it / "run_args.json")["args"]["tensor_model_parallel_size"] == 2
    assert len(list(it.glob("*.distcp"))) >= 4, "sharded weights from every rank"


def test_convert_exports_tp2_pp2_at_its_layout_as_save_hf_does(tp2pp2):
    """convert.sh runs at the checkpoint's own TP=2 x PP=2 (no reload at TP=1) and writes what --save-hf wrote
    during training, tensor for tensor (both bf16), with the manifest and the parity check."""
    import torch
    from safetensors.torch import load_file

    proc, export = tp2pp2["converted"], tp2pp2["export"]
    assert "torchrun --standalone --nproc_per_node=4" in proc.stdout
    assert "exported at the checkpoint's own layout (TP=2 PP=2" in proc.stdout
    assert "--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2" in proc.stdout
    parity = read_json(export / "parity.json")["model"]
    assert parity["ok"] and parity["value"] <= parity["bound"], parity
    listed = json.dumps(read_json(export / "manifest.json"))
    assert all(p.name in listed for p in export.glob("*.safetensors")), "every weight file is in the manifest"

    def tensors(directory: Path) -> dict:
        found = {}
        for path in sorted(directory.glob("*.safetensors")):
            found.update(load_file(path))
        return found

    ours, saved = tensors(export), tensors(tp2pp2["save"] / "iter_0000003" / "hf")
    assert saved and ours.keys() == saved.keys(), sorted(set(ours) ^ set(saved))[:6]
    for name, t in saved.items():
        assert ours[name].dtype == t.dtype == torch.bfloat16 and torch.equal(ours[name], t), name


@pytest.fixture(scope="module")
def exported(demo, work):
    export = work / "export"
    env = script_env(work, MLM_MODEL_CKPT=str(demo["tiny"] / "sft"), EXPORT_DIR=str(export))
    proc = run_script("convert", "tiny", env)
    return {"proc": proc, "dir": export}


def test_export_is_a_hugging_face_model_that_answers_like_generate(demo, exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert "exported at the checkpoint's own layout (TP=1 PP=1" in exported["proc"].stdout
    export = exported["dir"]
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (export / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    assert tokenizer.chat_template, "the chat template travels with the export"
    after = [json.loads(line) for line in (demo["tiny"] / "after.jsonl").read_text().splitlines()][:8]
    for record in after:
        ids = tokenizer.apply_chat_template(
            record["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        assert ids[0].tolist() == record["prompt_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False)
        new = out[0, ids.shape[1] :].tolist()
        assert new[: len(record["tokens"])] == record["tokens"], "greedy tokens of transformers and generate.sh"


def test_import_and_mmlu(exported, work):
    mlm = work / "imported"
    env = script_env(work, HF_MODEL_CKPT=str(exported["dir"]), MLM_MODEL_SAVE=str(mlm))
    run_script("convert", "tiny", env)
    assert tracker(mlm) == "release"
    release = mlm / "release"
    assert (release / "metadata.json").is_file() and not (release / "train_state.json").exists()
    assert read_json(release / "run_args.json")["args"]["num_layers"] == 2

    fixture = REPO / "tests" / "data" / "mmlu_fixture"
    results = work / "mmlu.json"
    env = script_env(
        work,
        MLM_MODEL_CKPT=str(mlm),
        MMLU_DATASET=str(fixture),
        MLM_EXTRA_ARGS=f"--seq-length 256 --results {results}",
    )
    proc = run_script("mmlu", "tiny", env)
    table = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    for subject in ("abstract_algebra", "high_school_geography", "nutrition", "philosophy"):
        assert table[subject][-1] == "4", f"4 questions of {subject} in the table"
    assert table["ALL"][-1] == "16"
    report = read_json(results)
    assert report["overall"]["total"] == 16 and set(report["subjects"]) == {
        "abstract_algebra",
        "high_school_geography",
        "nutrition",
        "philosophy",
    }
