"""Preference records: the four formats to one pair, bad records in one line, the response-only loss mask rendered
with the model's chat template, and the truncation rule (response tokens first, never the prompt)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_sft.data.formats import InvalidRecord
from megatron_sft.data.preference import fit_pair, to_preference_pair

USER = {"role": "user", "content": "What is 2+2?"}
GOOD = {"role": "assistant", "content": "4"}
BAD = {"role": "assistant", "content": "5"}


@pytest.mark.parametrize("record", [
    {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"chosen": [USER, GOOD], "rejected": [USER, BAD]},
    {"context": [USER], "completions": [{"rank": 1, "completion": [BAD]}, {"rank": 0, "completion": [GOOD]}]},
], ids=["conversational", "standard", "implicit", "ranked"])
def test_every_format_gives_the_same_pair(record):
    pair = to_preference_pair(record, "f.jsonl:1")
    assert (pair.prompt, pair.chosen, pair.rejected) == ([USER], [GOOD], [BAD])


def test_implicit_prompt_is_the_shared_prefix_up_to_the_responses():
    system = {"role": "system", "content": "Be brief."}
    pair = to_preference_pair({"chosen": [system, USER, GOOD, USER, GOOD],
                               "rejected": [system, USER, GOOD, USER, BAD]}, "f:1")
    assert pair.prompt == [system, USER, GOOD, USER] and pair.chosen == [GOOD] and pair.rejected == [BAD]
    opening = {"role": "assistant", "content": "Well,"}  # both responses open alike: still the responses'
    pair = to_preference_pair({"chosen": [USER, opening, GOOD], "rejected": [USER, opening, BAD]}, "f:1")
    assert pair.prompt == [USER] and pair.chosen == [opening, GOOD]


@pytest.mark.parametrize("record,needle", [
    ({"prompt": "q", "chosen": "a"}, "not a preference record (keys: chosen, prompt)"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "chosen and rejected are the same response"),
    ({"prompt": "q", "chosen": ["a"], "rejected": "b"}, "'chosen' must be a string"),
    ({"prompt": [USER], "chosen": [USER], "rejected": [BAD]}, "'chosen' must start with an assistant turn"),
    ({"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "other"}, BAD]}, "share no prompt"),
    ({"context": [USER], "completions": [{"rank": 0, "completion": [GOOD]}]}, "exactly two entries"),
    ({"context": [USER], "completions": [{"rank": 0, "completion": [GOOD]}, {"rank": 0, "completion": [BAD]}]},
     "two different integer ranks"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": [GOOD], "rejected": [BAD]}, "prompt: unknown role"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_bad_records_are_one_line_naming_the_place(record, needle):
    with pytest.raises(InvalidRecord) as err:
        to_preference_pair(record, "prefs.jsonl:7")
    message = str(err.value)
    assert message.startswith("prefs.jsonl:7: ") and needle in message and "\n" not in message


def _seq(prompt: int, response: int, tail: int = 1) -> tuple[np.ndarray, np.ndarray]:
    n = prompt + response + tail
    mask = np.zeros(n, dtype=np.uint8)
    mask[prompt:prompt + response] = 1
    return np.arange(n, dtype=np.uint32), mask


def test_a_pair_that_fits_is_left_alone():
    c, r = _seq(10, 5), _seq(10, 3)
    fitted = fit_pair(c, r, budget=40)
    assert fitted.truncated_tokens == 0 and fitted.chosen[0] is c[0] and fitted.rejected[0] is r[0]


def test_the_longer_response_is_cut_first_and_the_prompt_never():
    c, r = _seq(10, 30, tail=0), _seq(10, 6, tail=0)  # 56 tokens into 40: 16 come off the chosen response
    fitted = fit_pair(c, r, budget=40)
    assert len(fitted.chosen[0]) + len(fitted.rejected[0]) == 40 and fitted.truncated_tokens == 16
    assert len(fitted.rejected[0]) == 16 and (fitted.chosen[0][:10] == c[0][:10]).all()
    both = fit_pair(_seq(10, 30, tail=0), _seq(10, 20, tail=0), budget=40)  # both long: they share the room
    assert (len(both.chosen[0]), len(both.rejected[0])) == (20, 20) and both.truncated_tokens == 30


def test_a_prompt_that_leaves_no_room_drops_the_pair():
    assert fit_pair(_seq(20, 5), _seq(20, 5), budget=41) is None


def test_rendered_with_the_chat_template_only_the_response_is_supervised():
    from megatron_sft.data.encode import SampleEncoder
    from megatron_sft.data.render import ChatRenderer
    from megatron_sft.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer("qwen3")
    earlier = {"role": "assistant", "content": "an earlier answer"}
    pair = to_preference_pair({"prompt": [USER, earlier, USER], "chosen": [GOOD], "rejected": [BAD]}, "f:1")
    renderer, encoder = ChatRenderer(tok), SampleEncoder(tok)
    for which, answer in (("chosen", "4"), ("rejected", "5")):
        ids, mask = encoder.encode([renderer.render(pair.conversation(which), "f:1")])[0]
        supervised = tok.decode(ids[mask.astype(bool)].tolist())
        assert answer in supervised and "earlier" not in supervised and "2+2" not in supervised
        assert supervised.rstrip().endswith("<|im_end|>")


def test_a_preference_cache_packs_each_pair_whole(tmp_path):
    """Prepared like SFT data: each kept pair is two samples (chosen, rejected) side by side in one pack; a long
    pair is truncated and a hopeless one dropped, both counted; the split keeps pairs whole."""
    import json

    from megatron_sft.config import DataConfig
    from megatron_sft.data.cache import prepare
    from megatron_sft.data.dataset import SFTDataset
    from megatron_sft.tiny import make_tiny_tokenizer

    data = tmp_path / "prefs.jsonl"
    records = [{"prompt": f"question {i}", "chosen": "yes " * (1 + i % 5), "rejected": "no " * (1 + i % 3)}
               for i in range(40)]
    records.append({"prompt": "q", "chosen": "long answer " * 200, "rejected": "short"})  # truncated
    records.append({"prompt": "very long question " * 200, "chosen": "a", "rejected": "b"})  # dropped
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = DataConfig(data_path=[str(data)], seq_length=128, split="90,10,0", preference=True,
                     data_cache_dir=str(tmp_path / "cache"), context_parallel_size=2)
    prepared = prepare(cfg, make_tiny_tokenizer("qwen3"), is_builder=True)
    stats = prepared.meta["stats"]
    assert stats["truncated"] == 1 and stats["dropped"] == {"prompt_too_long": 1}
    assert prepared.meta["splits"]["train"]["conversations"] + prepared.meta["splits"]["valid"][
        "conversations"] == 41
    for split in ("train", "valid"):
        ds = SFTDataset.from_prepared(prepared, split, cfg)
        for i in range(len(ds)):
            ids = ds.samples_of(i)
            assert len(ids) % 2 == 0 and all(c % 2 == 0 and r == c + 1 for c, r in zip(ids[::2], ids[1::2]))
            pack = ds[i]
            assert int(pack["cu_seqlens_padded"][-1]) == 128 and all(
                int(n) % 4 == 0 for n in pack["cu_seqlens_padded"][1:len(ids) + 1] - pack["cu_seqlens_padded"][:len(ids)])
