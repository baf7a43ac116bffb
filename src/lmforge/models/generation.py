"""Text generation shared by the generative tasks (causal LM now, seq2seq and instruction tuning next).

Decoding settings come from the task config (``task.generation``): ``max_new_tokens``, ``do_sample``,
``temperature``, ``top_k``, ``top_p``, ``num_beams``, ``length_penalty``, ``no_repeat_ngram_size``,
``repetition_penalty`` and ``seed``. Encoder-decoders (seq2seq) generate from tokenized batches with
:func:`generate_ids` (batched, with the KV cache). Prompts are
generated in batches; decoder-only models are padded on the left so every prompt ends where its new
tokens begin. The seed is fixed for sampling, and the caller's RNG state is left untouched, so
generating during training does not change the run. :func:`generate` shows its batches as a progress stage
(:mod:`lmforge.utils.progress`: a bar in a terminal, one line otherwise, rank 0 only); ``progress=None``
shows nothing.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from lmforge.utils import progress as _progress

DEFAULTS = {"max_new_tokens": 40, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
            "num_beams": 1, "repetition_penalty": 1.0, "seed": 0, "batch_size": 16, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0}
KNOWN = set(DEFAULTS)


def generation_kwargs(settings: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    """``model.generate`` keyword arguments from the task's decoding settings."""
    from lmforge.utils.errors import ConfigError

    unknown = set(settings) - KNOWN
    if unknown:
        raise ConfigError(f"task.generation: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN))}")
    g = {**DEFAULTS, **settings}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = dict(max_new_tokens=int(g["max_new_tokens"]), do_sample=bool(g["do_sample"]),
                                  num_beams=int(g["num_beams"]), pad_token_id=pad)
    if int(g["num_beams"]) > 1 and float(g["length_penalty"]) != 1.0:
        kwargs["length_penalty"] = float(g["length_penalty"])
    if int(g["no_repeat_ngram_size"] or 0) > 0:
        kwargs["no_repeat_ngram_size"] = int(g["no_repeat_ngram_size"])
    if float(g["repetition_penalty"]) != 1.0:
        kwargs["repetition_penalty"] = float(g["repetition_penalty"])
    if g["do_sample"]:
        kwargs.update(temperature=float(g["temperature"]), top_k=int(g["top_k"]), top_p=float(g["top_p"]))
    else:  # greedy/beam: no sampling knobs (transformers warns about unused ones)
        kwargs.update(temperature=None, top_k=None, top_p=None)
    return kwargs


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], settings: Mapping[str, Any] | None = None,
             add_special_tokens: bool = False, new_only: bool = False,
             progress: str | None = "generating") -> list[str]:
    """The decoded output for each prompt (for decoder-only models: the prompt followed by its continuation,
    as ``transformers.pipeline("text-generation")`` returns it; for encoder-decoders: the generated text).
    ``new_only``: decoder-only models return the continuation alone (a chat model's answer, decoded as the
    text-generation pipeline decodes a chat's new assistant message). ``progress``: the description of the
    progress stage the batches are shown as (counting prompts), None for none."""
    settings = dict(settings or {})
    kwargs = generation_kwargs(settings, tokenizer)
    batch_size = int(settings.get("batch_size", DEFAULTS["batch_size"]))
    decoder_only = not getattr(model.config, "is_encoder_decoder", False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    if decoder_only:
        tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out_texts: list[str] = []
    devices = [device] if device.type == "cuda" else []
    shown = _progress.Stage(progress or "", total=len(prompts), unit="prompts", mode="off" if progress is None else None)
    try:
        with torch.random.fork_rng(devices=devices), shown:
            torch.manual_seed(int(settings.get("seed", DEFAULTS["seed"])))
            for start in range(0, len(prompts), batch_size):
                chunk = [str(p) for p in prompts[start: start + batch_size]]
                enc = tokenizer(chunk, add_special_tokens=add_special_tokens, padding=True, return_tensors="pt")
                ids, mask = enc["input_ids"], enc["attention_mask"]
                if ids.shape[1] == 0:  # only empty prompts: start from the beginning-of-text token
                    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
                    ids = torch.full((len(chunk), 1), start_id)
                    mask = torch.ones_like(ids)
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
                if new_only and decoder_only:
                    out = out[:, ids.shape[1]:]
                out_texts.extend(tokenizer.batch_decode(out, skip_special_tokens=True))
                shown.advance(len(chunk))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out_texts


def call_kwargs(settings: Mapping[str, Any] | None, tokenizer: Any) -> dict[str, Any]:
    """``generate`` (or pipeline call) keyword arguments for the task's settings over the defaults, without the
    ones that are unset (``batch_size`` is lmforge's, not a generation setting)."""
    settings = {**DEFAULTS, **dict(settings or {})}
    kwargs = generation_kwargs({k: v for k, v in settings.items() if k != "batch_size"}, tokenizer)
    return {k: v for k, v in kwargs.items() if v is not None}


@torch.no_grad()
def generate_ids(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: Any,
                 settings: Mapping[str, Any] | None = None) -> list[str]:
    """Encoder-decoders: the decoded output for each row of an already tokenized, padded batch, with the
    task's decoding settings (greedy or beam search; the model's own start, end and pad tokens)."""
    settings = dict(settings or {})
    kwargs = call_kwargs(settings, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(settings.get("seed", DEFAULTS["seed"])))
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
    finally:
        model.train(was_training)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
