"""SmolLM2-135M-Instruct, real weights, through the whole stack: numerics against transformers, the masks of its
real chat template, and fine-tuning (full and LoRA) through finetune.sh from the GGUF, judged on held-out answers.

The reference is transformers reading the GGUF itself (tests/real/conftest.py), never the project's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_sft.tasks.capitals import build as build_capitals
from megatron_sft.tasks.capitals import score
from tests.conftest import torchrun
from tests.real.conftest import MODEL
from tests.workflow.helpers import run_script, script_env

pytestmark = [pytest.mark.real, pytest.mark.slow]

WORKER = Path(__file__).parent / "workers" / "smollm2.py"
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Name a red fruit."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
TEXT = "The Megatron-Core library trains large transformer models with tensor and pipeline parallelism."


@pytest.fixture(scope="module")
def megatron_runs(smollm2_hf, smollm2_work, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2_runs")
    from transformers import AutoTokenizer

    text_ids = AutoTokenizer.from_pretrained(smollm2_hf)(TEXT)["input_ids"]
    torch.manual_seed(0)
    n = len(text_ids)  # a real sentence, and random ids of the same length
    tokens = torch.stack([torch.tensor(text_ids), torch.randint(0, 49152, (n,))])
    torch.save(tokens, out / "tokens.pt")
    (out / "prompts.json").write_text(json.dumps(PROMPTS))
    for world_size in (1, 3):  # TP=1 and TP=3 (9 heads, 3 KV groups)
        torchrun(WORKER, world_size, ["--load", smollm2_hf, "--tokens", out / "tokens.pt",
                                      "--prompts", out / "prompts.json", "--out", out], timeout=600)
    return out


@pytest.mark.distributed
@pytest.mark.numerics
@pytest.mark.parametrize("tp", [1, 3])
def test_logits_equal_transformers(megatron_runs, reference_model, tp):
    tokens = torch.load(megatron_runs / "tokens.pt")
    with torch.no_grad():
        ref = reference_model(tokens).logits
    ours = torch.load(megatron_runs / f"logits_tp{tp}.pt")[..., : ref.shape[-1]]
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    print(f"TP={tp}: max |logit difference| against transformers {diff:.2e}")
    # as tests/distributed/test_foundation.py's TOL: two fp32 implementations, 30 layers, rounding only
    assert diff <= 1e-4, f"TP={tp}: max |logit difference| {diff:.2e} against transformers"


@pytest.mark.distributed
@pytest.mark.numerics
@pytest.mark.parametrize("tp", [1, 3])
def test_greedy_generation_is_token_identical(megatron_runs, reference_model, tp):
    runs = json.loads((megatron_runs / f"greedy_tp{tp}.json").read_text())
    for run in runs:
        prompt = torch.tensor([run["prompt_ids"]])
        with torch.no_grad():  # <|im_end|> (id 2) ends an answer, as the GGUF's eos says
            out = reference_model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=2,
                                           pad_token_id=2)
        assert run["tokens"] == out[0, prompt.shape[1]:].tolist(), f"TP={tp}: prompt {run['prompt_ids'][-8:]}"
    assert any(len(r["tokens"]) >= 5 for r in runs), "the model answered nothing: not a real comparison"


# -- masks under the real template ----------------------------------------------------------------------------
def _supervised_texts(hf_dir: Path, record: dict) -> list[str]:
    from transformers import AutoTokenizer

    from megatron_sft.data.batch import build_pack
    from megatron_sft.data.pipeline import ChunkProcessor
    from megatron_sft.data.sources import RawChunk

    tok = AutoTokenizer.from_pretrained(hf_dir)
    result = ChunkProcessor(tok, None, 512)(RawChunk(0, "t.jsonl", False, [(1, record)]))
    pack = build_pack([(result.tokens, result.supervised)], 512, tok.pad_token_id)
    runs, current = [], []
    for label, m in zip(pack["labels"].tolist(), pack["loss_mask"].tolist()):
        if m:
            current.append(label)
        elif current:
            runs, current = runs + [current], []
    return [tok.decode(r) for r in runs + ([current] if current else [])]


def _conversation(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def test_masks_without_system_message_supervise_only_the_answer(smollm2_hf):
    """The template inserts its default system prompt; it and the question carry no loss."""
    record = _conversation(("user", "What is 2+2?"), ("assistant", "4"))
    assert _supervised_texts(smollm2_hf, record) == ["4<|im_end|>"]


def test_masks_with_system_message_and_several_turns(smollm2_hf):
    record = _conversation(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
                           ("user", "Capital of Peru?"), ("assistant", "Lima, on the coast."))
    assert _supervised_texts(smollm2_hf, record) == ["Hello!<|im_end|>", "Lima, on the coast.<|im_end|>"]


def test_the_gguf_tokenizer_ends_answers_with_im_end(smollm2_hf):
    """transformers 5.14.1 reads this GGUF's eos as <|im_start|>; the cached directory keeps the file's own ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")


# -- fine-tuning from the GGUF through finetune.sh ---------------------------------------------------------------
TRAIN = "--seq-length 128 --micro-batch-size 4 --global-batch-size 8 --train-iters {iters} --lr {lr} " \
        "--min-lr {min_lr} --lr-decay-style cosine --lr-warmup-iters 1 --log-interval 2 --save-interval 1000"


@pytest.fixture(scope="module")
def capitals(tmp_path_factory) -> dict[str, Path]:
    return build_capitals(tmp_path_factory.mktemp("capitals"), n_heldout=8)


def _heldout_answers(work: Path, save: Path, prompts: Path, gguf: Path) -> list[tuple[str, str]]:
    out = save.parent / f"{save.name}_answers.jsonl"
    env = script_env(work, HF_MODEL_CKPT=str(gguf), MLM_MODEL_SAVE=str(save), PROMPTS_PATH=str(prompts),
                     OUTPUT_PATH=str(out), MLM_EXTRA_ARGS="--max-new-tokens 24")
    run_script("generate", MODEL, env, timeout=300)
    return [(r["completion"], r["reference"]) for r in map(json.loads, out.read_text().splitlines())]


def _in_format(answers: list[tuple[str, str]]) -> int:
    return sum(score(completion, reference)[0] for completion, reference in answers)


@pytest.mark.parametrize("peft, iters, lr", [("none", 5, "1e-4"), ("lora", 5, "2e-3")])
def test_fine_tuning_from_the_gguf_changes_held_out_answers(smollm2_gguf, smollm2_hf, smollm2_work, capitals,
                                                            reference_model, peft, iters, lr):
    """Before: prose, never the JSON format. After a one-epoch-or-less run: the format on unseen countries."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    heldout = [json.loads(line) for line in capitals["heldout"].read_text().splitlines()]
    before = []
    for record in heldout:
        ids = tok.apply_chat_template(record["messages"][:-1], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            out = reference_model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=2)
        before.append((tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True),
                       record["messages"][-1]["content"]))
    assert _in_format(before) == 0, before
    print(f"{peft}: before fine-tuning {_in_format(before)}/{len(before)} held-out answers in the trained format")

    save = smollm2_work / f"sft_{peft}"
    flags = TRAIN.format(iters=iters, lr=lr, min_lr=float(lr) / 10)
    env = script_env(smollm2_work, HF_MODEL_CKPT=str(smollm2_gguf), DATASET=str(capitals["train"]),
                     MLM_MODEL_SAVE=str(save), PEFT=peft, MLM_EXTRA_ARGS=flags)
    proc = run_script("finetune", MODEL, env, timeout=900)
    assert "the GGUF is read from its Hugging Face form" in proc.stdout + proc.stderr
    assert "dequantized the GGUF" not in proc.stdout + proc.stderr, "the cached Hugging Face directory was not reused"

    after = _heldout_answers(smollm2_work, save, capitals["heldout"], smollm2_gguf)
    exact = sum(score(c, r)[1] for c, r in after)
    print(f"{peft}: after {iters} iterations {_in_format(after)}/{len(after)} in the trained format, {exact} exact")
    assert _in_format(after) >= 0.75 * len(after), after
