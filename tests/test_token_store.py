"""The memory-mapped token store: flat token files, the same bytes with one or two tokenizing processes,
block views equal to the in-memory packing, lazy maps in workers, and bounded, fixed evaluation subsets."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmforge.data.packing import pack_sequences
from lmforge.data.text_corpus import CorpusDocuments, read_documents
from lmforge.data.token_store import TokenBlocks, encode_documents, eval_subset, token_dtype, write_tokens
from lmforge.train import build_datamodule
from lmforge.utils.errors import ConfigError
from lmforge.utils.resolvers import minilm_path


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def corpus_text(n_docs: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "fox", "runs", "over", "a", "lazy", "dog", "river", "stone", "émigré", "naïve", "42"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n_docs)]
    docs[3] = "   "  # whitespace only: not a document
    return "\n\n".join(docs) + "\n"


def test_dtype_follows_the_vocabulary() -> None:
    assert token_dtype(30522) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(128_256) == np.uint32


def test_an_id_too_large_for_the_store_is_an_error(tok) -> None:
    with pytest.raises(ValueError, match="does not fit the token store's uint8"):
        encode_documents(tok, ["the fox runs"], tok.sep_token_id, np.uint8)


def test_one_and_two_processes_write_the_same_tokens_as_packing(tok, tmp_path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(corpus_text(3000))
    docs = CorpusDocuments([path])
    assert len(docs) == 2999  # the whitespace-only one is skipped
    one = write_tokens(tmp_path / "one.bin", docs, tok, tok.sep_token_id, processes=1)
    two = write_tokens(tmp_path / "two.bin", docs, tok, tok.sep_token_id, processes=2)
    assert one["dtype"] == np.dtype(np.uint16).str
    assert (tmp_path / "one.bin").read_bytes() == (tmp_path / "two.bin").read_bytes()
    np.testing.assert_array_equal(one["doc_starts"], two["doc_starts"])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left
    # the stream is every document's ids + [SEP], as the in-memory packer concatenates them
    ids = tok(list(read_documents([path])), add_special_tokens=False)["input_ids"]
    blocks, tail = pack_sequences(ids, 64, tok.sep_token_id, drop_last=False)
    store = TokenBlocks(tmp_path / "one.bin", one["dtype"], one["n_tokens"], 64)
    assert one["n_tokens"] == blocks.size + tail.size and len(store) == len(blocks)
    np.testing.assert_array_equal(store.blocks, blocks)
    np.testing.assert_array_equal(store[5]["input_ids"].numpy(), blocks[5])
    assert store[-1]["input_ids"].dtype == torch.int64
    starts = one["doc_starts"]
    assert len(starts) == len(ids) and starts[0] == 0
    np.testing.assert_array_equal(np.diff(starts), [len(x) + 1 for x in ids[:-1]])
    with pytest.raises(IndexError):
        store[len(store)]


def test_blocks_reopen_their_map_in_each_worker(tok, tmp_path) -> None:
    info = write_tokens(tmp_path / "t.bin", ["the fox runs over a lazy dog " * 40] * 20, tok, tok.sep_token_id)
    ds = TokenBlocks(tmp_path / "t.bin", info["dtype"], info["n_tokens"], 32)
    _ = ds[0]  # map opened here
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._tokens is None and len(pickle.dumps(ds)) < 2000  # the tokens never travel
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    got = torch.cat([b["input_ids"] for b in loader])
    np.testing.assert_array_equal(got.numpy(), ds.blocks)
    (tmp_path / "t.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="damaged"):
        TokenBlocks(tmp_path / "t.bin", info["dtype"], info["n_tokens"], 32)


def test_eval_subset_is_fixed_sorted_and_bounded() -> None:
    a = eval_subset(10_000, 256, 1234)
    assert len(a) == 256 and np.all(np.diff(a) > 0) and a.max() < 10_000
    np.testing.assert_array_equal(a, eval_subset(10_000, 256, 1234))
    assert not np.array_equal(a, eval_subset(10_000, 256, 1))
    assert eval_subset(100, 256, 0) is None and eval_subset(100, None, 0) is None


def lm_cfg(make_cfg, path, *extra):
    return make_cfg(["task=masked_lm", "model=minilm", "data=text", f"data.train_files={path}",
                     "data.block_size=32", "extras.print_config=false", *extra])


def test_datamodule_stores_tokens_and_evaluates_a_fixed_subset(make_cfg, tmp_path, tok) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(2000, seed=1))
    dm = build_datamodule(lm_cfg(make_cfg, path, "data.max_eval_blocks=16"))
    dm.prepare_data()
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["validation"]
    assert isinstance(train, TokenBlocks) and train.dtype == np.uint16
    assert len(val) == 16 and val.n_blocks > 16 and dm.meta["sizes"]["validation"] == val.n_blocks
    assert dm.meta["documents"] == {"train": 1899, "validation": 100}  # 5% carved, by position
    # the carved training documents, packed in memory, are the stored training blocks
    docs = list(read_documents([path]))
    from lmforge.data.splits import carve

    train_docs, _ = carve(docs, 0.05, 1234)
    ids = tok(train_docs, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(train.blocks, pack_sequences(ids, 32, tok.sep_token_id))
    # the same blocks at every validation; max_eval_blocks does not change the tokens (a cache hit)
    batches = [torch.cat([b["input_ids"] for b in dm.val_dataloader()]) for _ in range(2)]
    assert torch.equal(*batches) and len(batches[0]) == 16
    full = build_datamodule(lm_cfg(make_cfg, path, "data.max_eval_blocks=null"))
    full.prepare_data()
    full.setup("fit")
    assert full.cache_hit and full.cache.dir == dm.cache.dir
    assert len(full.datasets["validation"]) == val.n_blocks
    np.testing.assert_array_equal(full.datasets["validation"].blocks[val.indices], val.blocks)


def test_max_eval_blocks_must_be_positive(make_cfg, tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(50))
    with pytest.raises(ConfigError, match="data.max_eval_blocks=0"):
        build_datamodule(lm_cfg(make_cfg, path, "data.max_eval_blocks=0"))
    with pytest.raises(ConfigError, match="data.tokenize_workers=0"):
        build_datamodule(lm_cfg(make_cfg, path, "data.tokenize_workers=0"))
