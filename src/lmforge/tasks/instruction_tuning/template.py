"""The chat template, and conversations -> token ids with labels on the assistant's tokens only.

A tokenizer that has a chat template keeps it. One without (a tokenizer trained by lmforge, GPT-2's, a
causal-LM run's export) gets lmforge's plain template (:data:`TEMPLATE`), whose markers ``<|system|>``,
``<|user|>``, ``<|assistant|>`` and ``<|end|>`` are added to the tokenizer as special tokens: each is one token,
never split or produced by ordinary text, and skipped when answers are decoded. The template is saved with the
tokenizer into the export, so ``tokenizer.apply_chat_template`` and ``pipeline("text-generation")`` use it there.

A conversation is rendered with the template and tokenized once; the characters of each assistant turn are found
by rendering the conversation up to that turn with and without it (``add_generation_prompt=True`` gives where the
answer starts), so the labels are exactly the tokens of every assistant answer and the end-of-turn marker that
follows it, with any template.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lmforge.utils.errors import ConfigError

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
MARKERS = [SYSTEM, USER, ASSISTANT, END]
# lmforge's plain template: a marker line per turn, the text, the end marker
TEMPLATE = ("{% for message in messages %}"
            "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
IGNORE = -100


def ensure_chat_template(tokenizer: Any) -> Any:
    """The tokenizer with a chat template (its own, else lmforge's, markers added as special tokens) and a pad
    token (its end token when it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        have = set(tokenizer.get_vocab())
        missing = [m for m in MARKERS if m not in have]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        tokenizer.chat_template = TEMPLATE
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')} has neither a pad nor an end "
                              "token; batches are padded with one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def template_id(tokenizer: Any) -> str:
    return hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()[:16]


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # a template that raises on this conversation (jinja's raise_exception)
        raise ConfigError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'the tokenizer')} cannot render "
                          f"this conversation: {e}") from None


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """The text a model continues to answer ``messages`` (the conversation and the assistant's opening)."""
    return render(tokenizer, messages, add_generation_prompt=True)


def assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant answer (its text and the template's
    end-of-turn after it, trailing whitespace excluded)."""
    text = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else prompt_text(tokenizer, [])
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ConfigError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'the tokenizer')} does not "
                              "render a conversation as its turns one after the other (it rewrites earlier turns), so "
                              "the assistant's tokens cannot be found; use a template that does, or lmforge's own "
                              "(a tokenizer without a chat_template gets it)")
        start, end = len(before), len(upto.rstrip())
        spans.append((start, max(start, end)))
    return text, spans


def encode_conversation(tokenizer: Any, messages: list[dict], assistant_only: bool = True) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: labels are the ids on assistant tokens (every turn) and -100 elsewhere, or the ids on
    every token but the first with ``assistant_only=False``."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if not assistant_only:
        return ids, [IGNORE] + ids[1:]
    labels = [IGNORE] * len(ids)
    k = 0
    for t, (s, e) in enumerate(offsets):
        while k < len(spans) and s >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= s < spans[k][1] and e > s:
            labels[t] = ids[t]
    if labels:
        labels[0] = IGNORE  # nothing predicts the first token (in a packed row: the previous example would)
    return ids, labels


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The tokens that end an answer: the template's end-of-turn token (found by rendering a probe conversation)
    and the tokenizer's end token."""
    out: list[int] = []
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    try:
        text, spans = assistant_spans(tokenizer, probe)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = spans[-1][0]
        after = [i for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if s > start and e > s]
        specials = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        for i in after:
            if i in specials:
                out.append(int(i))
                break
    except ConfigError:
        pass
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in out:
        out.append(int(tokenizer.eos_token_id))
    return out
