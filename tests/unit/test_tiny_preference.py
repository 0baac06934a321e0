"""The embedded preference task (megatron_sft/tiny/preference.py): a rule a fine-tuned demo model has no reason to
prefer either way, with held-out pairs training never sees."""

from __future__ import annotations

import json

from megatron_sft.tiny.preference import build_preference_task


def test_the_chosen_answer_is_the_larger_number_wherever_it_stands(tmp_path):
    paths = build_preference_task(tmp_path, n_train=400, n_heldout=50)
    rows = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in paths.items()}
    assert len(rows["train"]) == 400 and len(rows["heldout"]) == 50
    first = 0
    for row in rows["train"] + rows["heldout"]:
        a, b = row["prompt"][0]["content"].removeprefix("pick: ").split()
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert {a, b} == {chosen, rejected} and len(a) == len(b) and int(chosen) > int(rejected)
        first += a == chosen
    assert 0.4 < first / 450 < 0.6, "the larger number must not sit in one place"
    numbers = [{p["chosen"][0]["content"], p["rejected"][0]["content"]} for p in rows["train"]]
    held_out = set().union(*({p["chosen"][0]["content"], p["rejected"][0]["content"]} for p in rows["heldout"]))
    assert not held_out & set().union(*numbers), "held-out numbers are never trained on"
