"""``lmforge-prepare``: text files -> litdata chunks of token ids, for ``data=litdata`` (multi-node pretraining
from a bucket or shared storage).

It takes the overrides of the training run that would read the text (``task=``, ``model=``, ``data=text
data.train_files=...``, ``data.doc_separator``, ``data.validation_fraction``, ``data.tokenizer_training.*``)
plus where to write::

    lmforge-prepare output_dir=chunks task=causal_lm data=text data.train_files='corpus/*.txt'
    python -m lmforge.prepare output_dir=s3://bucket/chunks task=causal_lm data=text data.train_files=...

Options of this command (before or among the overrides): ``output_dir=`` (required; a folder or a
``s3://``/``gs://`` URL litdata writes to), ``chunk_bytes=`` (default 64MB), ``workers=`` (litdata's
optimize workers, default 1 per file up to the CPU count).

The tokenizer is the task's: the model's own, or the one a ``data=text`` run would train (cached, then
saved with the chunks). Documents are tokenized without special tokens, an end-of-document token after each,
as the in-memory path packs them; the validation split is ``data.validation_files``, else the same documents
``data.streaming=true`` would carve out (``data.validation_fraction``, ``data.split_seed``). Token ids are
stored as uint16 when the vocabulary fits (< 65,536 tokens), else int32.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from omegaconf import DictConfig

from lmforge.data.litdata_source import FORMAT, META, TOKENIZER, is_remote, join, require_litdata
from lmforge.utils import progress
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

OPTIONS = {"output_dir": None, "chunk_bytes": "64MB", "workers": None}


class TokenizeFile:
    """litdata's ``fn``: one text file -> arrays of token ids (an end-of-document token after each document).
    Picklable: the tokenizer is loaded from its folder in each optimize worker."""

    def __init__(self, tokenizer_dir: str, doc_separator: str, sep_id: int, dtype: str,
                 masks: dict[str, list[bool]] | None, keep: bool):
        self.tokenizer_dir, self.doc_separator, self.sep_id, self.dtype = tokenizer_dir, doc_separator, sep_id, dtype
        self.masks, self.keep = masks, keep  # masks[file][i]: document i held out for validation; keep: held-out ones
        self._tok = None

    def documents(self, path: str) -> Iterator[str]:
        from lmforge.data.text_corpus import read_documents

        mask = (self.masks or {}).get(path)
        for i, doc in enumerate(read_documents([path], self.doc_separator)):
            held = bool(mask[i]) if mask is not None and i < len(mask) else False
            if mask is None or held == self.keep:
                yield doc

    def __call__(self, path: str) -> Iterator[np.ndarray]:
        from transformers import AutoTokenizer

        from lmforge.data.text_corpus import PIECE_CHARS, token_ids

        if self._tok is None:
            self._tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        batch: list[str] = []

        def flush() -> np.ndarray:
            short = [d for d in batch if len(d) <= PIECE_CHARS]
            ids = iter(self._tok(short, add_special_tokens=False)["input_ids"]) if short else iter(())
            parts = []
            for d in batch:
                parts += [np.asarray(next(ids) if len(d) <= PIECE_CHARS else token_ids(self._tok, d), dtype=self.dtype),
                          np.array([self.sep_id], dtype=self.dtype)]
            batch.clear()
            return np.concatenate(parts)

        for doc in self.documents(path):
            batch.append(doc)
            if len(batch) == 256:
                yield flush()
        if batch:
            yield flush()


def _start_method() -> str | None:
    """fork where the platform has it (Linux): a spawned worker re-imports torch and transformers (seconds)."""
    import multiprocessing as mp

    return "fork" if "fork" in mp.get_all_start_methods() and sys.platform.startswith("linux") else None


def _count(split_dir: str, storage_options: dict) -> dict:
    from lmforge.data.litdata_source import read_text

    index = json.loads(read_text(join(split_dir, "index.json"), storage_options))
    return {"tokens": int(sum(c["dim"] or 0 for c in index["chunks"])), "chunks": len(index["chunks"])}


def prepare(cfg: DictConfig, output_dir: str, chunk_bytes: str | int = "64MB", workers: int | None = None,
            storage_options: dict | None = None) -> dict:
    """Write ``output_dir`` (see :mod:`lmforge.data.litdata_source`) from the text of the run ``cfg`` describes;
    returns ``lmforge.json``'s content."""
    litdata = require_litdata()
    from litdata import TokensLoader

    from lmforge.data.packing import PackedTextDataModule, separator_id
    from lmforge.train import build_datamodule

    if cfg.data.get("source") == "litdata":
        raise ConfigError("lmforge-prepare reads text: give data=text data.train_files=<files> (not data=litdata)")
    dm = build_datamodule(cfg)
    if not isinstance(dm, PackedTextDataModule):
        raise ConfigError(f"lmforge-prepare writes pretraining chunks: task={cfg.task.name} is not causal_lm or masked_lm")
    if dm.source == "hub" or not dm.files.get("train"):
        raise ConfigError("lmforge-prepare reads text files: data=text data.train_files=<path or glob> (or data=sample)")
    t0 = time.time()
    tok = dm._ensure_tokenizer(None)
    sep = separator_id(tok)
    dtype = "uint16" if len(tok) <= 65536 else "int32"
    train_files = [str(p) for p in dm.files["train"]]
    if dm.files.get("validation"):
        splits = {"train": (train_files, None, False), "validation": ([str(p) for p in dm.files["validation"]], None, False)}
    else:
        skip = {k: [bool(x) for x in v] for k, v in dm._stream_skip().items()}
        splits = {"train": (train_files, skip or None, False)}
        if skip:
            splits["validation"] = ([f for f in train_files if any(skip.get(f, []))], skip, True)
    if dm.files.get("test"):
        splits["test"] = ([str(p) for p in dm.files["test"]], None, False)

    remote = is_remote(output_dir)
    local_out = None if remote else Path(output_dir).expanduser()
    staging = Path(tempfile.mkdtemp(prefix="lmforge-prepare-"))
    tok_dir = (local_out / TOKENIZER) if local_out else staging / TOKENIZER
    if local_out:
        local_out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(tok_dir))
    meta: dict[str, Any] = {"format": FORMAT, "task": str(cfg.task.name), "tokenizer": dm.tokenizer_name or "trained",
                            "vocab_size": len(tok), "separator_id": sep, "dtype": dtype,
                            "doc_separator": dm.doc_separator, "splits": {}}
    try:
        for split, (files, masks, keep) in splits.items():
            out = join(output_dir, split)
            if local_out and (local_out / split).exists():
                shutil.rmtree(local_out / split)  # a fresh write, not litdata's append
            n = workers or max(1, min(len(files), os.cpu_count() or 1))
            with progress.stage(f"writing litdata chunks of the {split} split ({len(files)} files -> {out})",
                                total=len(files), unit="files") as shown:
                kwargs = dict(fn=TokenizeFile(str(tok_dir), dm.doc_separator, sep, dtype, masks, keep), inputs=files,
                              output_dir=out, chunk_bytes=chunk_bytes, item_loader=TokensLoader(), num_workers=n,
                              verbose=False, reorder_files=False, start_method=_start_method(),
                              storage_options=storage_options or {}, mode="overwrite" if remote else None)
                accepted = inspect.signature(litdata.optimize).parameters  # `verbose` is newer than 0.2.44
                litdata.optimize(**{k: v for k, v in kwargs.items() if k in accepted})
                shown.advance(len(files))
            meta["splits"][split] = {**_count(out, storage_options or {}), "files": len(files)}
            if meta["splits"][split]["tokens"] == 0:
                raise DataError(f"the {split} split of {', '.join(files)} has no tokens")
        meta["seconds"] = round(time.time() - t0, 2)
        text = json.dumps(meta, indent=1)
        if local_out:
            (local_out / META).write_text(text, encoding="utf-8")
        else:
            import fsspec

            fs, _, paths = fsspec.get_fs_token_paths(join(output_dir, TOKENIZER), storage_options=storage_options or {})
            fs.put(str(tok_dir) + "/", paths[0].rstrip("/") + "/", recursive=True)
            with fsspec.open(join(output_dir, META), "w", **(storage_options or {})) as f:
                f.write(text)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("litdata chunks in %s: %s", output_dir, {s: v["tokens"] for s, v in meta["splits"].items()})
    return meta


def _pop_options(argv: list[str]) -> tuple[dict, list[str]]:
    opts, rest = dict(OPTIONS), []
    for a in argv:
        key = a.split("=", 1)[0].lstrip("-").replace("-", "_")
        if "=" in a and key in OPTIONS:
            opts[key] = a.split("=", 1)[1]
        else:
            rest.append(a)
    return opts, rest


def main() -> None:
    """``lmforge-prepare output_dir=<dir or URL> [chunk_bytes=64MB] [workers=N] [training overrides]``."""
    from lmforge.utils.quiet import quiet

    quiet()
    from lmforge.cli import _main, reported_errors

    opts, rest = _pop_options(sys.argv[1:])
    if not opts["output_dir"]:
        raise SystemExit("usage: lmforge-prepare output_dir=<folder or s3://bucket/prefix> [chunk_bytes=64MB] "
                         "[workers=N] task=causal_lm data=text data.train_files='corpus/*.txt' [overrides]")
    sys.argv = [sys.argv[0], *rest]

    def task(cfg: DictConfig) -> None:
        with reported_errors():
            meta = prepare(cfg, opts["output_dir"], opts["chunk_bytes"], int(opts["workers"]) if opts["workers"] else None)
            print(f"wrote {opts['output_dir']}: " + ", ".join(
                f"{s} {v['tokens']:,} tokens ({v['chunks']} chunks)" for s, v in meta["splits"].items())
                + f" in {meta['seconds']} s")

    _main("train", task, "prepare")


if __name__ == "__main__":
    main()
