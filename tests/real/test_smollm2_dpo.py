"""DPO on SmolLM2-135M-Instruct's real weights through dpo.sh, from the GGUF: one answer style preferred.

The pairs ask for a country's capital; the chosen answer is the JSON of the capitals task, the rejected one the
same fact in a sentence. The instruct model prefers its sentences before (measured, not assumed: summed log-probs
about -29 against -4); after 12 DPO steps it prefers the JSON on held-out countries, and greedy generation answers
in it. Judged by transformers on the exported Hugging Face directory and by generate.sh on the DPO checkpoint.

With RPO's NLL term (DPO_SFT_WEIGHT=1): plain DPO at this rate (2e-5) flipped the preference too, but by pushing
the sentences down more than the JSON up, and greedy generation became gibberish; at 5e-6 with the term, 12 steps
left the sentences more likely and the answers were neither.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from megatron_sft.tasks.capitals import QUESTIONS, answer, score, split
from megatron_sft.tiny.preference import preference_accuracy
from tests.real.conftest import MODEL
from tests.workflow.helpers import run_script, script_env

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(1500)]
ITERS = 12


def _pairs(countries: list[tuple[str, str]]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(country)}],
             "chosen": [{"role": "assistant", "content": answer(country, capital)}],
             "rejected": [{"role": "assistant", "content": f"The capital of {country} is {capital}."}]}
            for i, (country, capital) in enumerate(countries)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def style(smollm2_gguf, smollm2_hf, smollm2_work, tmp_path_factory) -> dict:
    data = tmp_path_factory.mktemp("capitals_style")
    train, heldout = split(n_heldout=16, seed=1)
    prefs = _write(data / "prefs.jsonl", _pairs(train))
    held = _write(data / "prefs_heldout.jsonl", _pairs(heldout))
    prompts = _write(data / "heldout_prompts.jsonl",
                     [{"messages": p["prompt"] + p["chosen"]} for p in _pairs(heldout)])
    save = smollm2_work / "dpo_style"
    env = script_env(smollm2_work, HF_MODEL_CKPT=str(smollm2_gguf), DATASET=str(prefs), MLM_MODEL_SAVE=str(save),
                     SAVE_HF="final", MLM_DATA_ARGS=f"--train-iters {ITERS} --split 85,15,0",
                     DPO_SFT_WEIGHT="1.0",
                     MLM_OPTIM_ARGS="--lr 2e-5 --min-lr 2e-6 --lr-decay-style cosine --lr-warmup-iters 1 "
                                    "--weight-decay 0.0 --clip-grad 1.0",
                     MLM_TRAIN_ARGS="--micro-batch-size 4 --global-batch-size 8",
                     MLM_EVAL_ARGS=f"--eval-interval {ITERS} --eval-iters 1 --save-interval 1000 --log-interval 2",
                     MLM_EXTRA_ARGS="--seq-length 128")
    proc = run_script("dpo", MODEL, env, timeout=1200)
    hf = save / f"iter_{ITERS:07d}" / "hf"
    answers = save.parent / "dpo_style_answers.jsonl"
    run_script("generate", MODEL, script_env(smollm2_work, MLM_MODEL_CKPT=str(save), PROMPTS_PATH=str(prompts),
                                             OUTPUT_PATH=str(answers), MLM_EXTRA_ARGS="--max-new-tokens 24"),
               timeout=300)
    return {"log": proc.stdout + proc.stderr, "hf": hf, "held": held, "pairs": _pairs(heldout),
            "answers": [json.loads(line) for line in answers.read_text().splitlines()]}


def test_the_held_out_preference_flips_to_the_chosen_style(style, smollm2_hf):
    before, n = preference_accuracy(smollm2_hf, style["held"])
    after, _ = preference_accuracy(style["hf"], style["held"])
    print(f"SmolLM2 held-out preference for the JSON answer: before {before}/{n}, after {after}/{n}")
    assert before <= n // 4, "the instruct model should prefer its sentences before DPO"
    assert after >= 0.9 * n


def test_the_run_reports_rewards_on_the_validation_pairs(style):
    """The held-out split's reward accuracy: 0 before training by definition (the policy is the reference)."""
    metrics = re.search(r"validation at iteration \d+ \| loss ([\d.]+) .*rewards/accuracies ([\d.]+) \| "
                        r"rewards/margins ([-\d.]+)", style["log"])
    assert metrics, style["log"][-3000:]
    loss, accuracy, margin = float(metrics[1]), float(metrics[2]), float(metrics[3])
    print(f"SmolLM2 DPO validation: loss {loss:.4f}, rewards/accuracies {accuracy:.2f}, margins {margin:.2f}")
    assert accuracy >= 0.9 and margin > 1.0


def test_generation_answers_in_the_chosen_style(style, reference_model, smollm2_hf):
    """Greedy answers to the held-out prompts: transformers on the GGUF before, generate.sh on the DPO checkpoint
    after; counted in the JSON format (score()'s first figure)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    before = 0
    assert len(style["answers"]) == len(style["pairs"])
    for record, pair in zip(style["answers"], style["pairs"]):
        ids = tok.apply_chat_template(pair["prompt"], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            out = reference_model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=2)
        before += score(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), record["reference"])[0]
    after = sum(score(r["completion"], r["reference"])[0] for r in style["answers"])
    n = len(style["answers"])
    print(f"SmolLM2 greedy answers in the JSON style: before {before}/{n}, after {after}/{n}")
    assert before == 0 and after >= 0.75 * n
