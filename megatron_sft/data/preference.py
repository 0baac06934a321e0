"""One preference record -> a validated pair (a shared prompt, a chosen and a rejected response), and a pair -> the
two token sequences DPO trains on, each with its loss mask on the response only.

Formats, detected per record:
    conversational  {"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}       (TRL)
    standard        {"prompt": "text", "chosen": "text", "rejected": "text"}                        (TRL)
    implicit        {"chosen": [whole conversation], "rejected": [whole conversation]}: the prompt is the
                    longest common prefix of messages, the rest are the responses                   (TRL)
    ranked          {"context": [messages], "completions": [{"rank": 0, "completion": [messages]}, {"rank": 1,
                    ...}]}: the lower rank is chosen                                                 (NeMo-RL)
A standard record's prompt is a user turn and its responses assistant turns, as SFT's prompt/completion records.

Rendered with the model's chat template exactly as SFT renders (data/render.py), the response turns supervised and
nothing else. A pair goes into one pack (chosen and rejected side by side), so it must fit `budget` tokens in all:
2 x prompt + chosen + rejected. A longer pair is truncated by one rule: response tokens come off the end of the
longer response first (so the two stay as equal as they can), never off the prompt; a pair whose prompt leaves no
room for a token of each response is dropped. Both outcomes are counted in the data report, never silent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_sft.data.encode import SampleEncoder
from megatron_sft.data.formats import Conversation, InvalidRecord, _validate_messages
from megatron_sft.data.pipeline import ChunkResult
from megatron_sft.data.render import ChatRenderer
from megatron_sft.data.sources import decode_line
from megatron_sft.data.stats import DataStats

PREFERENCE_FORMATS = ("conversational", "standard", "implicit", "ranked")


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[dict]  # messages before the responses (system, user, earlier turns)
    chosen: list[dict]  # the preferred response: assistant (and tool) turns
    rejected: list[dict]
    tools: list | None = None

    def conversation(self, which: str) -> Conversation:
        """The prompt and one response as SFT's Conversation: only the response's assistant turns supervised."""
        response = self.chosen if which == "chosen" else self.rejected
        train = [False] * len(self.prompt) + [m["role"] == "assistant" for m in response]
        return Conversation(self.prompt + response, train, self.tools)


def detect_preference_format(record: dict, where: str) -> str:
    if "context" in record and "completions" in record:
        return "ranked"
    if "chosen" not in record or "rejected" not in record:
        keys = ", ".join(sorted(record)) or "none"
        raise InvalidRecord(where, f"not a preference record (keys: {keys}); give prompt/chosen/rejected, "
                                   "chosen/rejected conversations, or context/completions", "not_a_preference")
    if "prompt" not in record:
        return "implicit"
    return "standard" if isinstance(record["prompt"], str) else "conversational"


def to_preference_pair(record, where: str) -> PreferencePair:
    """Detect, validate and return the pair of `record`; every problem an InvalidRecord naming `where`."""
    if not isinstance(record, dict):
        raise InvalidRecord(where, f"a record must be a JSON object, got {type(record).__name__}", "not_an_object")
    fmt = detect_preference_format(record, where)
    if fmt == "ranked":
        prompt, chosen, rejected = _from_ranked(record, where)
    elif fmt == "standard":
        prompt, chosen, rejected = _from_standard(record, where)
    elif fmt == "implicit":
        prompt, chosen, rejected = _from_implicit(record, where)
    else:
        prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    prompt = _messages(prompt, where, "prompt") if prompt else []
    chosen, rejected = _response(chosen, where, "chosen"), _response(rejected, where, "rejected")
    if chosen == rejected:
        raise InvalidRecord(where, "chosen and rejected are the same response", "same_responses")
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRecord(where, "'tools' must be a list of tool schemas", "bad_field")
    return PreferencePair(prompt, chosen, rejected, tools or None)


def _from_standard(record: dict, where: str) -> tuple:
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(record[key], str):
            raise InvalidRecord(where, f"'{key}' must be a string like 'prompt' (or all three message lists)",
                                "bad_field")
    return ([{"role": "user", "content": record["prompt"]}], [{"role": "assistant", "content": record["chosen"]}],
            [{"role": "assistant", "content": record["rejected"]}])


def _from_implicit(record: dict, where: str) -> tuple:
    chosen, rejected = record["chosen"], record["rejected"]
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise InvalidRecord(where, "without 'prompt', 'chosen' and 'rejected' must be whole conversations (message "
                                   "lists) sharing their prompt", "bad_field")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and isinstance(chosen[shared - 1], dict) and chosen[shared - 1].get("role") == "assistant":
        shared -= 1  # a response starts at the first assistant turn after the prompt, even if both open alike
    if shared == 0:
        raise InvalidRecord(where, "'chosen' and 'rejected' share no prompt (their first messages differ)",
                            "no_shared_prompt")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _from_ranked(record: dict, where: str) -> tuple:
    completions = record["completions"]
    if not isinstance(completions, list) or len(completions) != 2:
        raise InvalidRecord(where, "'completions' must hold exactly two entries (a chosen and a rejected one)",
                            "bad_completions")
    ranks = [c.get("rank") if isinstance(c, dict) else None for c in completions]
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks) or ranks[0] == ranks[1]:
        raise InvalidRecord(where, f"completions need two different integer ranks (the lower is chosen), got {ranks}",
                            "bad_completions")
    best, worst = sorted(completions, key=lambda c: c["rank"])
    return record["context"], best.get("completion"), worst.get("completion")


def _messages(messages, where: str, what: str) -> list[dict]:
    if not isinstance(messages, list):
        raise InvalidRecord(where, f"'{what}' must be a list of messages, got {type(messages).__name__}",
                            "bad_messages")
    try:
        clean, _, weights = _validate_messages(messages, where, unmask_user=False)
    except InvalidRecord as err:
        raise InvalidRecord(where, f"{what}: {err.problem}", err.reason) from None
    if any(w != 1.0 for w in weights):  # DPO's loss is per pair: a token weight would be dropped silently
        raise InvalidRecord(where, f"{what}: a message's \"weight\" shapes the SFT loss, not a preference pair's; "
                                   "remove it", "bad_field")
    return clean


def _response(messages, where: str, what: str) -> list[dict]:
    clean = _messages(messages, where, what)
    if clean[0]["role"] != "assistant":
        raise InvalidRecord(where, f"'{what}' must start with an assistant turn, got {clean[0]['role']!r}",
                            "bad_response")
    return clean


@dataclass
class EncodedPair:
    """The two sequences of a pair: token ids and a 0/1 response mask each, and what truncation did."""

    chosen: tuple[np.ndarray, np.ndarray]
    rejected: tuple[np.ndarray, np.ndarray]
    truncated_tokens: int = 0  # response tokens cut to fit the budget


def fit_pair(chosen: tuple[np.ndarray, np.ndarray], rejected: tuple[np.ndarray, np.ndarray],
             budget: int) -> EncodedPair | None:
    """Cut response tokens off the end of the longer response until both sequences fit `budget` together.
    None: the prompts alone leave no room for a token of each response."""
    (c_ids, c_mask), (r_ids, r_mask) = chosen, rejected
    c_prompt, r_prompt = _prompt_length(c_mask), _prompt_length(r_mask)
    c_resp, r_resp = len(c_ids) - c_prompt, len(r_ids) - r_prompt
    room = budget - c_prompt - r_prompt
    if room < 2:
        return None
    if c_resp + r_resp <= room:
        return EncodedPair(chosen, rejected)
    # the longer response gives first: equalise down to the shorter one, then share what room is left
    keep_short = min(min(c_resp, r_resp), room // 2)
    keep_long = min(max(c_resp, r_resp), room - keep_short)
    c_keep, r_keep = (keep_long, keep_short) if c_resp >= r_resp else (keep_short, keep_long)
    cut = c_resp - c_keep + r_resp - r_keep
    return EncodedPair((c_ids[:c_prompt + c_keep], c_mask[:c_prompt + c_keep]),
                       (r_ids[:r_prompt + r_keep], r_mask[:r_prompt + r_keep]), cut)


def _prompt_length(mask: np.ndarray) -> int:
    """Tokens before the first supervised one: the rendered prompt (and the response's role header)."""
    supervised = np.flatnonzero(mask)
    return int(supervised[0]) if len(supervised) else len(mask)


class PairProcessor:
    """ChunkProcessor's counterpart for preference data (pipeline.py): each kept record becomes two samples, its
    chosen then its rejected sequence, fitted together into `budget` tokens (`fit_pair`)."""

    def __init__(self, tokenizer, chat_template: str | None, budget: int, *, skip_invalid: bool = False):
        self.renderer = ChatRenderer(tokenizer, chat_template)
        self.encoder = SampleEncoder(tokenizer)
        self.budget, self.skip_invalid = budget, skip_invalid

    def __call__(self, chunk):
        return self.tokenize(*self.render(chunk))

    def render(self, chunk):
        """Stage 1 (Python): decode, validate and render both sequences of every pair."""
        stats, rendered, wheres = DataStats(), [], []
        for n, item in chunk.items:
            where = chunk.where(n)
            stats.records_read += 1
            try:
                pair = to_preference_pair(decode_line(chunk, n, item) if chunk.is_lines else item, where)
                rendered += [self.renderer.render(pair.conversation(w), where) for w in ("chosen", "rejected")]
                wheres.append(where)
            except InvalidRecord as e:
                if not self.skip_invalid:
                    raise
                stats.count("invalid", e.reason, where)
        return chunk, stats, rendered, wheres

    def tokenize(self, chunk, stats: DataStats, rendered: list, wheres: list):
        """Stage 2: tokenize, fit each pair into the budget (or drop it, counted), keep the two samples."""
        encoded = self.encoder.encode(rendered)
        kept = []
        for k, where in enumerate(wheres):
            fitted = fit_pair(encoded[2 * k], encoded[2 * k + 1], self.budget)
            if fitted is None:
                stats.count("dropped", "prompt_too_long", where)
                continue
            if fitted.truncated_tokens:
                stats.truncated += 1
                stats.examples.setdefault("truncated_pair", where)
            if any(int(mask[1:].sum()) == 0 for _, mask in (fitted.chosen, fitted.rejected)):
                stats.count("dropped", "no_supervised_tokens", where)
                continue
            for ids, mask in (fitted.chosen, fitted.rejected):
                stats.add_sample(len(ids), int(mask[1:].sum()))
                kept.append((ids, mask))
        return ChunkResult(
            tokens=np.concatenate([ids for ids, _ in kept]) if kept else np.zeros(0, np.uint32),
            supervised=np.concatenate([m for _, m in kept]) if kept else np.zeros(0, np.uint8),
            lengths=np.array([len(ids) for ids, _ in kept], dtype=np.int64),
            source=chunk.source,
            stats=stats,
        )
