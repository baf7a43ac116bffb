"""Instruction and chat data as people write it, read into one shape: a list of ``{"role", "content"}`` messages.

Formats (detected per row from its keys, and one format per file; ``data.format`` sets it):

* ``chat``: ``{"messages": [{"role": "system|user|assistant", "content": ...}, ...]}`` (OpenAI fine-tuning
  files, the hub's chat datasets); one or several turns;
* ``sharegpt``: multi-turn dialogues as ``{"conversations": [{"from": "human|gpt|system", "value": ...}]}``
  (``role``/``content`` keys inside are read too);
* ``alpaca``: ``{"instruction", "input", "output"}``; a non-empty ``input`` follows the instruction after a
  blank line in the user message;
* ``prompt_completion``: ``{"prompt", "completion"}`` (both texts, or both message lists as TRL writes
  conversational prompt/completion data).

Checks, each naming the file and line (or record) and the message: an unknown role, an empty content, a
conversation without an assistant turn, two user (or assistant) turns in a row and a system message that is
not first (``data.alternation=true``, what most chat templates need), a file that mixes formats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.sources import columns_of, where
from lmforge.utils.errors import ConfigError, DataError

FORMATS = ("chat", "sharegpt", "alpaca", "prompt_completion")
# each format as a message names it
LABELS = {"chat": "chat", "sharegpt": "ShareGPT", "alpaca": "Alpaca", "prompt_completion": "prompt/completion"}
ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names (and a few spellings seen in hub dialogue sets) -> roles
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
            "model": "assistant", "chatgpt": "assistant", "system": "system"}
KEYS = {"chat": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
        "prompt_completion": ("prompt", "completion")}


def detect(row: Mapping[str, Any]) -> str | None:
    """The format of one row from its keys (None: none of them)."""
    cols = set(columns_of(dict(row)))
    for fmt in FORMATS:
        if set(KEYS[fmt]) <= cols:
            return fmt
    return None


def check_format(fmt: str | None) -> str:
    fmt = fmt or "auto"
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"data.format={fmt}: expected auto, {', '.join(FORMATS)}")
    return fmt


def file_format(rows: Sequence[Mapping[str, Any]], origin: str, fmt: str = "auto") -> str:
    """The one format of a file's rows: ``fmt`` when set (every row must have its keys), else detected from the
    first row; a row of another format is an error naming it (a file mixes formats)."""
    if not rows:
        raise DataError(f"{origin}: no rows")
    first = detect(rows[0]) if fmt == "auto" else fmt
    if first is None:
        raise DataError(f"{where(origin, dict(rows[0]))}: no chat or instruction fields among "
                        f"{', '.join(columns_of(dict(rows[0]))) or '(none)'}; expected messages (chat), conversations "
                        "(ShareGPT), instruction/input/output (Alpaca) or prompt/completion, or set data.format")
    for r in rows:
        got = detect(r)
        if got != first:
            if got is None:
                raise DataError(f"{where(origin, dict(r))}: no {'/'.join(KEYS[first])} fields (the file is in "
                                f"{first} format); this row has {', '.join(columns_of(dict(r))) or 'no fields'}")
            raise DataError(f"{where(origin, dict(r))}: a row in {LABELS[got]} format in a file of {LABELS[first]} rows "
                            f"(first row: "
                            f"{where(origin, dict(rows[0]))}); a file holds one format: split it into one file "
                            "per format")
    return first


def _text(value: Any, place: str, what: str, allow_empty: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DataError(f"{place}: the {what} is {type(value).__name__} {value!r:.80}; expected a text")
    if not allow_empty and not value.strip():
        raise DataError(f"{place}: empty {what}; every message needs some text")
    return value


def _messages(items: Any, place: str, speaker_key: str = "role", text_key: str = "content",
              names: Mapping[str, str] | None = None) -> list[dict]:
    if not isinstance(items, list):
        raise DataError(f"{place}: expected a list of messages, got {type(items).__name__}")
    out = []
    for i, m in enumerate(items, 1):
        if not isinstance(m, Mapping):
            raise DataError(f"{place}: message {i} is {type(m).__name__}; expected an object with role and content")
        sk, tk = speaker_key, text_key
        if sk not in m and "role" in m:  # ShareGPT files written with role/content keys
            sk, tk = "role", "content"
        role = m.get(sk)
        mapped = (names or {r: r for r in ROLES}).get(str(role).lower() if isinstance(role, str) else role)
        if mapped is None:
            known = ", ".join(sorted(set((names or {r: r for r in ROLES}))))
            raise DataError(f"{place}: message {i} has the unknown role {role!r}; expected one of {known}")
        out.append({"role": mapped, "content": _text(m.get(tk), place, f"content of message {i} ({mapped})")})
    return out


def to_messages(row: Mapping[str, Any], fmt: str, place: str) -> list[dict]:
    """One row of format ``fmt`` as a list of messages (checked for roles and empty texts)."""
    if fmt == "chat":
        return _messages(row.get("messages"), place)
    if fmt == "sharegpt":
        return _messages(row.get("conversations"), place, "from", "value", SPEAKERS)
    if fmt == "alpaca":
        instruction = _text(row.get("instruction"), place, "instruction")
        extra = _text(row.get("input"), place, "input", allow_empty=True)
        user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
        out = [{"role": "user", "content": user}]
        if "output" in row and row.get("output") is not None:
            out.append({"role": "assistant", "content": _text(row.get("output"), place, "output")})
        return out
    if fmt == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, list):
            msgs = _messages(prompt, place)
            return msgs + (_messages(completion, place) if completion is not None else [])
        out = [{"role": "user", "content": _text(prompt, place, "prompt")}]
        if completion is not None:
            out.append({"role": "assistant", "content": _text(completion, place, "completion")})
        return out
    raise ConfigError(f"data.format={fmt}: expected auto, {', '.join(FORMATS)}")


def check_conversation(messages: list[dict], place: str, alternation: bool = True, need_assistant: bool = True) -> None:
    """An assistant turn somewhere (``need_assistant``); with ``alternation``: at most one system message, first,
    then user and assistant turns alternating, starting with the user."""
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        roles = ", ".join(m["role"] for m in messages) or "no messages"
        raise DataError(f"{place}: the conversation has no assistant turn ({roles}); there is nothing to learn "
                        "from it: add the answer, or remove the row")
    if not alternation:
        return
    expected = "user"
    for i, m in enumerate(messages, 1):
        role = m["role"]
        if role == "system":
            if i != 1:
                raise DataError(f"{place}: message {i} is a system message; the chat template takes one system "
                                "message, first (set data.alternation=false if your template takes others)")
            continue
        if role != expected:
            what = "two user turns in a row" if role == "user" else (
                "two assistant turns in a row" if i > 1 and messages[i - 2]["role"] == "assistant"
                else "an assistant turn before any user turn")
            raise DataError(f"{place}: message {i} ({role}): {what}; the chat template needs user and assistant "
                            "turns alternating (merge the turns, or set data.alternation=false)")
        expected = "assistant" if role == "user" else "user"


def read_conversations(rows: Sequence[Mapping[str, Any]], origin: str, fmt: str = "auto", alternation: bool = True,
                       need_assistant: bool = True) -> list[dict]:
    """Rows of one source -> ``{"messages", <place keys>}`` rows, every one checked."""
    fmt = check_format(fmt)
    if not rows:
        return []
    by_file: dict[str, list] = {}
    for r in rows:  # several files in one split: each file has its own format
        by_file.setdefault(str(r.get("__file__", origin)), []).append(r)
    out = []
    for file_origin, file_rows in by_file.items():
        f = file_format(file_rows, file_origin, fmt)
        for r in file_rows:
            place = where(origin, dict(r))
            msgs = to_messages(r, f, place)
            check_conversation(msgs, place, alternation, need_assistant)
            out.append({"messages": msgs, **{k: r[k] for k in ("__line__", "__record__", "__file__") if k in r}})
    return out


def prompt_and_reference(messages: list[dict]) -> tuple[list[dict], str | None]:
    """The conversation up to its last assistant turn (the prompt to answer) and that turn's text (None when the
    conversation does not end with one)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return list(messages), None
