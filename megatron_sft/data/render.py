"""Chat-template rendering and the supervised character spans of each trained turn.

A conversation is rendered once, whole, with the tokenizer's own template. To find which characters
belong to a trained turn, the conversation is rendered again with each trained turn's message replaced
by a unique sentinel; the text outside the turns must be identical in both renders (checked), so each
turn's span in the real render is fixed by the text around it. Templates such as Qwen3's re-render
earlier turns when later ones exist, so renders of prefixes are never used. When the two renders do
not line up, each turn is located on its own by a sentinel render and a diff (slower, same rule).

A span runs from the end of the turn's role header (the template's generation prompt, for assistant
turns) through the end-of-turn token (`<|im_end|>`, `<|eot_id|>`): think blocks and tool calls the
template emits are inside it; the newline after the end-of-turn token is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_sft.data.formats import Conversation, InvalidRecord
from megatron_sft.errors import UserError

_SENTINEL = "\u2063SFTSPAN{}\u2064"  # invisible separators: never trimmed, never in real data


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # supervised character ranges [start, end), sorted
    dropped: dict[str, int] = field(default_factory=dict)  # content the template left out, by kind
    weights: list[float] | None = None  # each span's loss weight (its message's "weight"); None: all 1


class ChatRenderer:
    """Renders conversations with one chat template and finds their supervised spans."""

    def __init__(self, tokenizer, chat_template: str | None = None):
        template = chat_template or getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # tokenizers may carry several named templates
            template = template.get("default")
        if not template:
            raise UserError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                "give one with --chat-template FILE (a Jinja file)"
            )
        self.template = template
        self._kwargs = dict(tokenizer.special_tokens_map)  # what apply_chat_template passes (bos_token, ...)
        specials = set(tokenizer.all_special_tokens)
        specials |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        self._specials = sorted(specials, key=len, reverse=True)
        self.generation_header = self._probe_generation_header()
        self.end_of_turn = self._probe_end_of_turn()

    # -- template calls -------------------------------------------------------------------------
    def render_text(self, messages_list: list[list[dict]], tools=None, add_generation_prompt=False) -> list[str]:
        from transformers.utils.chat_template_utils import render_jinja_template

        texts, _ = render_jinja_template(
            conversations=messages_list,
            tools=tools,
            chat_template=self.template,
            add_generation_prompt=add_generation_prompt,
            **self._kwargs,
        )
        return texts

    def _probe_generation_header(self) -> str | None:
        probe = [{"role": "user", "content": "probe"}]
        (plain,) = self.render_text([probe])
        (prompted,) = self.render_text([probe], add_generation_prompt=True)
        header = prompted[len(plain) :] if prompted.startswith(plain) else ""
        return header or None

    def _probe_end_of_turn(self) -> str:
        marker = _SENTINEL.format("probe")
        (text,) = self.render_text([[{"role": "user", "content": "probe"}, {"role": "assistant", "content": marker}]])
        after = text[text.find(marker) + len(marker) :]
        hits = [(after.find(s), s) for s in self._specials if s and after.find(s) >= 0]
        first = min((at for at, _ in hits), default=-1)
        if first < 0 or after[:first].strip():
            raise UserError(
                "the chat template emits no special end-of-turn token right after an assistant turn "
                f"(it emits {after[:40]!r}); use a template whose turns end with one, via --chat-template FILE"
            )
        return max((s for at, s in hits if at == first), key=len)

    # -- spans ----------------------------------------------------------------------------------
    def render(self, conv: Conversation, where: str = "?") -> Rendered:
        trained = [i for i, t in enumerate(conv.train) if t]
        replaced = [
            {"role": m["role"], "content": _SENTINEL.format(i)} if i in trained else m
            for i, m in enumerate(conv.messages)
        ]
        try:
            full, probe = self.render_text([conv.messages, replaced], conv.tools)
            spans = self._spans_together(full, probe, conv, trained)
            if spans is None:
                spans = [self._span_alone(full, conv, i) for i in trained]
        except Exception as e:  # noqa: BLE001 - a Jinja error or raise_exception(): the record is at fault
            raise InvalidRecord(where, f"the chat template rejected the conversation: {e}", "template_error") from None
        # A turn the template does not render (None) has no span, and its weight goes with it.
        kept = [(span, i) for span, i in zip(spans, trained) if span is not None]
        weights = [conv.weights[i] for _, i in kept] if conv.weights else None
        return Rendered(full, [span for span, _ in kept], self._dropped(full, conv), weights)

    def _turn_start(self, text: str, content_at: int, role: str, floor: int) -> int:
        """Where the turn whose content the template put at `content_at` begins: after its role header."""
        header = self.generation_header
        if role == "assistant" and header:
            at = text.rfind(header, floor, content_at)
            if at >= 0:
                return at + len(header)
        return content_at

    def _spans_together(self, full: str, probe: str, conv: Conversation, trained: list[int]):
        eot, pieces, floor = self.end_of_turn, [], 0
        for i in trained:
            marker = _SENTINEL.format(i)
            s = probe.find(marker, floor)
            end = probe.find(eot, s + len(marker)) if s >= 0 else -1
            if end < 0:
                return None
            start = self._turn_start(probe, s, conv.messages[i]["role"], floor)
            pieces.append(probe[floor:start])
            floor = end + len(eot)
        pieces.append(probe[floor:])
        spans, pos = [], 0
        for piece in pieces[:-1]:
            if not full.startswith(piece, pos):
                return None
            start = pos + len(piece)
            end = full.find(eot, start)
            if end < 0:
                return None
            spans.append((start, end + len(eot)))
            pos = end + len(eot)
        return spans if full[pos:] == pieces[-1] else None

    def _span_alone(self, full: str, conv: Conversation, i: int) -> tuple[int, int] | None:
        """Span of turn i from a render with only that turn replaced; None if the template does not render
        the turn at all (its content is then counted as dropped by the template)."""
        msgs = list(conv.messages)
        msgs[i] = {"role": msgs[i]["role"], "content": _SENTINEL.format(i)}
        (probe,) = self.render_text([msgs], conv.tools)
        if probe == full:
            return None
        head = _common_prefix(full, probe)
        tail = min(_common_prefix(full[::-1], probe[::-1]), min(len(full), len(probe)) - head)
        end = full.find(self.end_of_turn, len(full) - tail)
        if end < 0:
            raise ValueError(f"no end-of-turn token {self.end_of_turn!r} after messages[{i}]")
        return self._turn_start(full, head, msgs[i]["role"], 0), end + len(self.end_of_turn)

    @staticmethod
    def _dropped(full: str, conv: Conversation) -> dict[str, int]:
        """Count message parts whose text the template did not emit (Qwen3 drops earlier reasoning)."""
        dropped: dict[str, int] = {}
        for m in conv.messages:
            content = m["content"]
            parts = [("reasoning", m.get("reasoning_content", ""))]
            if "</think>" in content:
                think, _, content = content.partition("</think>")
                parts.append(("reasoning", think.split("<think>")[-1]))
            parts.append(("content", content))
            for call in m.get("tool_calls") or []:
                parts.append(("tool_calls", call.get("function", call)["name"]))
            for kind, text in parts:
                if text.strip() and text.strip() not in full:
                    dropped[kind] = dropped.get(kind, 0) + 1
        return dropped


def _common_prefix(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # bisection on slice equality runs at C speed
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
