"""Train a tokenizer on a corpus with the ``tokenizers`` library, and cache it by its inputs.

* ``kind="bpe"``: GPT-2 style byte-level BPE for decoders. One special token, ``<|endoftext|>``,
  serves as eos (the packer puts it between documents), bos, unk (never produced: every byte is in
  the vocabulary) and pad. No post-processor: encoding adds no special tokens.
* ``kind="seq2seq"``: SentencePiece-style BPE (``\u2581`` word starts) for encoder-decoders (translation, summarization), trained on
  sources and targets together; specials ``<pad>=0 </s>=1 <unk>=2`` as T5 numbers them; encoding
  appends ``</s>`` (the end of every source and every target).
* ``kind="wordpiece"``: BERT style WordPiece for encoders, ``##`` continuation, specials
  ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``; encoding adds ``[CLS] ... [SEP]``
  (``[CLS] a [SEP] b [SEP]`` for pairs).

Both are saved with ``save_pretrained`` so ``AutoTokenizer.from_pretrained(output_dir)`` reloads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lmforge.data.text_corpus import read_documents
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError

CACHE_VERSION = "1"  # bump when training changes in a way that should invalidate cached tokenizers
EOS = "<|endoftext|>"
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
KINDS = ("bpe", "wordpiece", "seq2seq")
S2S_PAD, S2S_EOS, S2S_UNK = "<pad>", "</s>", "<unk>"
# data.tokenizer_training: enabled auto = when the model names no tokenizer; kind auto = the task's kind
SETTINGS = {"enabled": "auto", "kind": "auto", "vocab_size": 8000, "min_frequency": 2, "lowercase": False}


def training_settings(given: Mapping | None, task_kind: str) -> dict:
    """``data.tokenizer_training`` completed with the defaults and checked; ``kind`` resolved for the task."""
    tt = {**SETTINGS, **dict(given or {})}
    if tt["enabled"] not in ("auto", True, False):
        raise ConfigError(f"data.tokenizer_training.enabled={tt['enabled']}: expected auto, true or false")
    kind = task_kind if tt["kind"] == "auto" else tt["kind"]
    if kind not in KINDS:
        raise ConfigError(f"data.tokenizer_training.kind={kind}: expected auto, {' or '.join(KINDS)}")
    return {**tt, "kind": kind}


def train_tokenizer(
    texts: Iterable[str],
    kind: str,
    vocab_size: int,
    output_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train a ``kind`` tokenizer of at most ``vocab_size`` tokens (specials included) on ``texts``.

    Small corpora may give fewer tokens than asked for. Saved to ``output_dir`` when given.
    """
    if kind == "bpe":
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: use >= {len(alphabet) + 1}")
        tok = Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS],
            initial_alphabet=alphabet,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        specials = dict(bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
    elif kind == "seq2seq":
        # SentencePiece-style BPE (as T5/mBART tokenize): a word-start marker instead of bytes, so decoding
        # gives the text back without a leading space; characters never seen in training are <unk>
        tok = Tokenizer(models.BPE(unk_token=S2S_UNK))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=[S2S_PAD, S2S_EOS, S2S_UNK], limit_alphabet=1000,
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {S2S_EOS}", pair=f"$A {S2S_EOS} $B {S2S_EOS}", special_tokens=[(S2S_EOS, tok.token_to_id(S2S_EOS))])
        specials = dict(pad_token=S2S_PAD, eos_token=S2S_EOS, unk_token=S2S_UNK)
        specials["model_input_names"] = ["input_ids", "attention_mask"]
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[PAD, UNK, CLS, SEP, MASK],
            continuing_subword_prefix="##",
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
        )
        specials = dict(pad_token=PAD, unk_token=UNK, cls_token=CLS, sep_token=SEP, mask_token=MASK)
        specials["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    else:
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, clean_up_tokenization_spaces=False, **specials
    )
    if output_dir is not None:
        tokenizer.save_pretrained(str(output_dir))
    return tokenizer


def cache_key(
    files: Sequence[str | os.PathLike], kind: str, vocab_size: int, **options: object
) -> str:
    """Hash of what determines a trained tokenizer: each file's path, size and mtime, and the options."""
    stats = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    blob = json.dumps(
        {"version": CACHE_VERSION, "files": stats, "kind": kind, "vocab_size": vocab_size, **options}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_tokenizer(
    files: Sequence[str | os.PathLike],
    kind: str,
    vocab_size: int,
    cache_root: str | os.PathLike,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 1024,
    doc_separator: str = "blank_line",
) -> PreTrainedTokenizerFast:
    """Load the tokenizer trained on ``files`` with these settings from ``cache_root``, training it on a miss.

    The entry is keyed by the files (path, size, mtime), every option and :data:`CACHE_VERSION`,
    and written by :func:`train_into`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(KINDS)}")
    options = dict(
        min_frequency=min_frequency, lowercase=lowercase, model_max_length=model_max_length, doc_separator=doc_separator
    )
    entry = Path(cache_root) / f"{kind}-{vocab_size}-{cache_key(files, kind, vocab_size, **options)}"
    if not entry.is_dir():
        docs = read_documents([Path(f) for f in files], doc_separator)
        info = {"files": [str(f) for f in files], "kind": kind, "vocab_size": vocab_size, **options}
        train_into(entry, docs, kind, vocab_size, min_frequency, lowercase, model_max_length, info)
    return PreTrainedTokenizerFast.from_pretrained(str(entry), trust_remote_code=False)  # lmforge's own: no code


def train_into(
    entry: str | os.PathLike,
    texts: Iterable[str],
    kind: str,
    vocab_size: int,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 1024,
    info: dict | None = None,
) -> Path:
    """Train on ``texts`` into the cache folder ``entry`` (with ``info`` as ``lmforge_cache.json``).

    Written to a temporary folder and renamed into place, so a half-written entry is never loaded
    and concurrent processes cannot corrupt it (the first rename wins; the others' are equal).
    Shown as a progress stage counting the texts read (of ``len(texts)`` when it has a length); the
    stage lasts until the tokenizer is trained and saved.
    """
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    total = len(texts) if hasattr(texts, "__len__") else None  # type: ignore[arg-type]
    try:
        with progress.stage(f"training a {kind} tokenizer ({vocab_size:,} tokens)", total=total, unit="texts") as shown:
            train_tokenizer(progress.counted(texts, shown), kind, vocab_size, tmp, min_frequency, lowercase,
                            model_max_length)
        (tmp / "lmforge_cache.json").write_text(json.dumps(info or {}, indent=2, default=str))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished first; its entry is equivalent
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
