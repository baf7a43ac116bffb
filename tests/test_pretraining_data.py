"""Pretraining data: corpus reading, packing, streaming shards, masking, tokenizer training."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmforge.data import tokenizer_training
from lmforge.data.masking import IGNORE_INDEX, MaskingCollator, word_start_index, word_start_table
from lmforge.data.packing import Packer, check_block_size, pack_sequences
from lmforge.data.streaming import StreamingPackedDataset
from lmforge.data.text_corpus import read_documents, resolve_text_files, split_train_validation
from lmforge.data.tokenizer_training import cached_tokenizer, train_tokenizer

TINY_SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")
EOS = 0


def int_tokenize(text: str) -> list[int]:
    """Test tokenizer: a document is its token ids written out as numbers."""
    return [int(t) for t in text.split()]


def expected_stream(docs: list[list[int]], eos: int = EOS) -> list[int]:
    return [t for d in docs if d for t in [*d, eos]]


# -- text corpus ----------------------------------------------------------------------------------


def test_resolve_text_files_globs_sorted_deduplicated(tmp_path: Path) -> None:
    for name in ["b.txt", "a.txt", "sub/c.txt", "sub/deep/d.txt", "notes.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    files = resolve_text_files(str(tmp_path / "*.txt"))
    assert [f.name for f in files] == ["a.txt", "b.txt"]
    files = resolve_text_files([str(tmp_path / "**/*.txt"), str(tmp_path / "a.txt"), str(tmp_path / "sub/../a.txt")])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.txt", "b.txt", "sub/c.txt", "sub/deep/d.txt"]


def test_resolve_text_files_errors_name_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        resolve_text_files([str(tmp_path / "missing.txt")])
    with pytest.raises(FileNotFoundError, match=r"nothing/\*\.txt"):
        resolve_text_files(str(tmp_path / "nothing/*.txt"))
    with pytest.raises(ValueError, match="empty"):
        resolve_text_files([])


def test_read_documents_separators(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_bytes("\ufefffirst doc\nstill first\n\n\n  \nsecond\r\n\r\nthird é\n\n".encode())
    g = tmp_path / "d.txt"
    g.write_text("fourth\n")
    assert list(read_documents([f, g])) == ["first doc\nstill first", "second", "third é", "fourth"]
    assert list(read_documents([f, g], "line")) == ["first doc", "still first", "second", "third é", "fourth"]
    assert list(read_documents([f, g], "file")) == [f.read_bytes().decode("utf-8-sig"), "fourth\n"]
    with pytest.raises(ValueError, match="doc_separator"):
        list(read_documents([f], "paragraph"))


def test_read_documents_decode_error_names_file_and_offset(tmp_path: Path) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"good line\n\ncaf\xe9\n")
    for sep in ["blank_line", "line", "file"]:
        with pytest.raises(ValueError, match=r"latin1\.txt.*byte offset 14"):
            list(read_documents([f], sep))


def test_split_train_validation(tmp_path: Path) -> None:
    docs = [f"doc {i}" for i in range(100)]
    train, val = split_train_validation(docs, 0.1, seed=3)
    assert (train, val) == split_train_validation(docs, 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == sorted(docs)
    assert val != split_train_validation(docs, 0.1, seed=4)[1]
    assert [len(s) for s in split_train_validation(["a", "b"], 0.01, seed=0)] == [1, 1]
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(ValueError, match="empty corpus: .*blank.txt"):
        split_train_validation(list(read_documents([blank])), 0.1, seed=0, files=[blank])
    with pytest.raises(ValueError, match="only 1 document"):
        split_train_validation(["one"], 0.1, seed=0)


# -- packing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_pack_sequences_keeps_every_token_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 7, 16, 64])
    lengths = [rng.choice([0, 1, rng.randrange(200)]) for _ in range(rng.randrange(40))]  # 0: empty after strip
    docs = [[rng.randrange(1, 50_000) for _ in range(n)] for n in lengths]
    stream = expected_stream(docs)
    blocks, tail = pack_sequences(docs, block_size, EOS, drop_last=False)
    assert blocks.ndim == 2 and blocks.shape[1] == block_size and np.issubdtype(blocks.dtype, np.integer)
    assert np.concatenate([blocks.ravel(), tail]).tolist() == stream  # no padding, nothing lost or repeated
    assert len(tail) < block_size
    eos_positions = np.flatnonzero(np.concatenate([blocks.ravel(), tail]) == EOS)
    assert eos_positions.tolist() == (np.cumsum([len(d) + 1 for d in docs if d]) - 1).tolist()
    dropped = pack_sequences(docs, block_size, EOS)
    assert np.array_equal(dropped, blocks)

    packer = Packer(block_size, EOS)
    streamed = [b for d in docs for b in packer.add(d)]
    assert np.array_equal(np.array(streamed).reshape(-1, block_size), blocks)
    assert packer.flush().tolist() == tail.tolist()


def test_check_block_size_message() -> None:
    check_block_size(1024, 1024)
    check_block_size(4096, None)
    with pytest.raises(ValueError) as e:
        check_block_size(2048, 1024)
    assert str(e.value) == (
        "data.block_size=2048 is longer than the model's context (model max_position_embeddings=1024); "
        "use data.block_size<=1024"
    )
    with pytest.raises(ValueError, match="positive"):
        check_block_size(0, 1024)


# -- streaming ------------------------------------------------------------------------------------


@pytest.fixture()
def numbered_corpus(tmp_path: Path) -> tuple[list[Path], list[list[int]]]:
    """200 documents over 3 files; document tokens are unique ids, so each token identifies its document."""
    rng = random.Random(0)
    docs, next_id = [], 1
    for _ in range(200):
        n = rng.randrange(1, 40)
        docs.append(list(range(next_id, next_id + n)))
        next_id += n
    files = []
    for k, chunk in enumerate([docs[:70], docs[70:71], docs[71:]]):
        files.append(tmp_path / f"part{k}.txt")
        files[-1].write_text("\n\n".join(" ".join(map(str, d)) for d in chunk) + "\n")
    return files, docs


def make_dataset(files: list[Path], **kwargs) -> StreamingPackedDataset:
    return StreamingPackedDataset(files, int_tokenize, block_size=kwargs.pop("block_size", 16), eos_id=EOS, **kwargs)


def shard_blocks(docs: list[list[int]], n_shards: int, block_size: int, drop_last: bool) -> Counter:
    """The blocks every shard should produce: document i goes to shard i % n_shards."""
    blocks: Counter = Counter()
    for s in range(n_shards):
        full, tail = pack_sequences(docs[s::n_shards], block_size, EOS, drop_last=False)
        blocks.update(tuple(b) for b in full.tolist())
        if not drop_last and len(tail):
            blocks[tuple(tail.tolist())] += 1
    return blocks


@pytest.mark.parametrize("drop_last", [False, True])
def test_streaming_two_ranks_two_workers_see_every_document_once(numbered_corpus, drop_last: bool) -> None:
    files, docs = numbered_corpus
    seen: Counter = Counter()
    for rank in range(2):
        ds = make_dataset(files, rank=rank, world_size=2, drop_last=drop_last)
        for item in DataLoader(ds, batch_size=None, num_workers=2):
            assert item["input_ids"].dtype == torch.long
            if drop_last:
                assert item["input_ids"].shape == (16,)
            seen[tuple(item["input_ids"].tolist())] += 1
    assert seen == shard_blocks(docs, 4, 16, drop_last)
    tokens = [t for block in seen.elements() for t in block]
    if not drop_last:  # every document exactly once, each followed by eos
        assert sorted(t for t in tokens if t != EOS) == [t for d in docs for t in d]
        assert tokens.count(EOS) == len(docs)
    else:  # only each shard's final partial block is missing
        assert len(expected_stream(docs)) - len(tokens) < 4 * 16
        assert len(set(tokens) - {EOS}) == len([t for t in tokens if t != EOS])


def test_streaming_shuffle_changes_per_epoch_and_stays_complete(numbered_corpus) -> None:
    files, docs = numbered_corpus
    kwargs = dict(world_size=2, shuffle_files=True, shuffle_buffer=8, seed=5, drop_last=False)
    orders = {}
    for epoch in [0, 1]:
        tokens = []
        for rank in range(2):
            a, b = make_dataset(files, rank=rank, **kwargs), make_dataset(files, rank=rank, **kwargs)
            a.set_epoch(epoch), b.set_epoch(epoch)
            stream = [x["input_ids"].tolist() for x in a]
            assert stream == [x["input_ids"].tolist() for x in b]  # same seed and epoch: same stream
            tokens += [t for block in stream for t in block]
        assert sorted(t for t in tokens if t != EOS) == [t for d in docs for t in d]
        orders[epoch] = tokens
    assert orders[0] != orders[1]


def test_streaming_blocks_per_rank_equalizes_steps(numbered_corpus) -> None:
    files, _ = numbered_corpus
    ds = make_dataset(files, rank=0, world_size=2)
    per_rank = ds.safe_blocks_per_rank(num_workers=2, batch_size=4)
    assert per_rank > 0 and per_rank % 8 == 0
    lengths = []
    for rank in range(2):
        ds = make_dataset(files, rank=rank, world_size=2, blocks_per_rank=per_rank)
        loader = DataLoader(ds, batch_size=4, num_workers=2)
        batches = list(loader)
        assert all(b["input_ids"].shape == (4, 16) for b in batches)
        lengths.append(len(batches))
        assert len(loader) == len(batches)
    assert lengths == [per_rank // 4] * 2
    too_many = make_dataset(files, rank=1, world_size=2, blocks_per_rank=10_000)
    with pytest.raises(RuntimeError, match="ran out"):
        list(too_many)


def test_streaming_resume_continues_exactly(numbered_corpus) -> None:
    files, _ = numbered_corpus
    kwargs = dict(rank=1, world_size=2, shuffle_files=True, shuffle_buffer=4, seed=1)
    full_ds = make_dataset(files, **kwargs)
    full_ds.set_epoch(1)
    full = [x["input_ids"] for x in full_ds]
    ds = make_dataset(files, **kwargs)
    ds.set_epoch(1)
    it = iter(ds)
    head = [next(it)["input_ids"] for _ in range(7)]
    state = ds.state_dict()
    assert state == {"epoch": 1, "blocks_yielded": 7}

    resumed = make_dataset(files, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what a per-epoch hook does; must not forget the resume point
    rest = [x["input_ids"] for x in resumed]
    assert torch.equal(torch.stack(head + rest), torch.stack(full))
    resumed.set_epoch(2)  # the next epoch starts from its beginning
    fresh = make_dataset(files, **kwargs)
    fresh.set_epoch(2)
    assert torch.equal(torch.stack([x["input_ids"] for x in resumed]), torch.stack([x["input_ids"] for x in fresh]))


def test_streaming_resume_with_workers(numbered_corpus) -> None:
    files, _ = numbered_corpus
    ds = make_dataset(files, rank=0, world_size=2, block_size=8)
    per_rank = ds.safe_blocks_per_rank(num_workers=2, batch_size=2)
    kwargs = dict(rank=0, world_size=2, block_size=8, blocks_per_rank=per_rank)
    full = [b["input_ids"] for b in DataLoader(make_dataset(files, **kwargs), batch_size=2, num_workers=2)]
    done = 5  # batches consumed before the interruption
    resumed = make_dataset(files, **kwargs)
    resumed.load_state_dict({"epoch": 0, "blocks_yielded": done * 2, "batch_size": 2})
    rest = [b["input_ids"] for b in DataLoader(resumed, batch_size=2, num_workers=2)]
    assert torch.equal(torch.cat(full[done:]), torch.cat(rest))


# -- masking --------------------------------------------------------------------------------------

PAD, UNK, CLS, SEP, MASK = range(5)
SPECIALS = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 1000


def random_batch(rng: np.random.Generator, n: int, max_len: int) -> list[dict]:
    """[CLS] tokens [SEP] sequences of varied lengths, with a few [UNK]s inside."""
    batch = []
    for _ in range(n):
        ids = rng.integers(5, VOCAB, size=int(rng.integers(max_len // 2, max_len - 1)))
        ids[rng.random(ids.shape) < 0.01] = UNK
        batch.append({"input_ids": [CLS, *ids.tolist(), SEP]})
    return batch


def test_masking_statistics() -> None:
    rng = np.random.default_rng(0)
    batch = random_batch(rng, 400, 680)  # ~200k tokens
    torch.manual_seed(0)
    out = MaskingCollator(MASK, VOCAB, SPECIALS, pad_id=PAD, pad_to_multiple_of=8)(batch)
    ids, labels, attn = out["input_ids"], out["labels"], out["attention_mask"]
    assert ids.shape[1] % 8 == 0 and all(t.dtype == torch.long for t in out.values())
    original = torch.full_like(ids, PAD)
    for row, ex in enumerate(batch):
        original[row, : len(ex["input_ids"])] = torch.tensor(ex["input_ids"])
        assert attn[row].sum() == len(ex["input_ids"])
    maskable = attn.bool() & ~torch.isin(original, torch.tensor(SPECIALS))
    selected = labels != IGNORE_INDEX
    assert maskable.sum() > 200_000
    assert not (selected & ~maskable).any()  # specials and padding never selected
    assert torch.equal(ids[~maskable], original[~maskable])
    assert torch.equal(labels[selected], original[selected])
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.015
    n = selected.sum()
    as_mask = (ids == MASK) & selected
    as_random = (ids != original) & (ids != MASK) & selected
    unchanged = (ids == original) & selected
    assert abs(as_mask.sum() / n - 0.8) < 0.015
    assert abs(as_random.sum() / n - 0.1) < 0.015
    assert abs(unchanged.sum() / n - 0.1) < 0.015
    assert not torch.isin(ids[as_random], torch.tensor(SPECIALS)).any()


def test_masking_selects_at_least_one_token_per_sequence() -> None:
    collator = MaskingCollator(MASK, VOCAB, SPECIALS, pad_id=PAD, mlm_probability=0.01)
    out = collator([{"input_ids": [CLS, 7, 8, SEP]}, {"input_ids": torch.tensor([CLS, 9, SEP])}])
    assert ((out["labels"] != IGNORE_INDEX).sum(dim=1) >= 1).all()
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    with pytest.raises(ValueError, match="pad_id"):
        MaskingCollator(MASK, VOCAB, SPECIALS)([{"input_ids": [5, 6]}, {"input_ids": [5]}])


def reference_words(ids: list[int], is_start: list[bool], maskable: list[bool]) -> list[list[int]]:
    """Words as lists of positions, computed the slow obvious way."""
    words: list[list[int]] = []
    for pos, (token, ok) in enumerate(zip(ids, maskable)):
        if not ok:
            continue
        if is_start[token] or not words or words[-1][-1] != pos - 1:
            words.append([pos])
        else:
            words[-1].append(pos)
    return words


def test_whole_word_masking_never_splits_a_word() -> None:
    vocab = [f"[S{i}]" for i in range(5)] + [("##" if i % 3 else "") + f"w{i}" for i in range(5, VOCAB)]
    table = word_start_table(vocab)
    assert table.tolist()[5:9] == [False, True, False, False]  # "##w5" continues, "w6" starts a word
    rng = np.random.default_rng(1)
    batch = random_batch(rng, 300, 680)
    collator = MaskingCollator(MASK, VOCAB, SPECIALS, pad_id=PAD, whole_word=True, word_start_mask=table)
    out = collator(batch)
    selected = (out["labels"] != IGNORE_INDEX).tolist()
    n_sel = n_maskable = multi = 0
    for row, ex in enumerate(batch):
        ids = ex["input_ids"]
        for word in reference_words(ids, table.tolist(), [t not in SPECIALS for t in ids]):
            picked = {selected[row][p] for p in word}
            assert len(picked) == 1, f"word at positions {word} was split"
            n_sel += len(word) * picked.pop()
            n_maskable += len(word)
            multi += len(word) > 1 and selected[row][word[0]]
    assert multi > 1000 and abs(n_sel / n_maskable - 0.15) < 0.015


def test_word_start_table_schemes() -> None:
    bpe = word_start_table({"<|endoftext|>": 0, "Ġthe": 1, "the": 2, "Ġcat": 3, "s": 4})
    assert bpe.tolist() == [False, True, False, True, False]
    sp = word_start_table(["<unk>", "▁the", "re", "▁cat"])
    assert sp.tolist() == [False, True, False, True]
    # the first word after a special token starts a word even without a prefix
    ids = torch.tensor([[0, 2, 4, 1, 4]])
    assert word_start_index(ids, bpe, ids != 0).tolist() == [[0, 1, 1, 3, 3]]


def test_validation_masks_fixed_training_masks_fresh() -> None:
    rng = np.random.default_rng(2)
    batch = random_batch(rng, 8, 64)
    val = MaskingCollator(MASK, VOCAB, SPECIALS, pad_id=PAD, seed=1234)
    first, second = val(batch), val(batch)
    assert all(torch.equal(first[k], second[k]) for k in first)
    again = MaskingCollator(MASK, VOCAB, SPECIALS, pad_id=PAD, seed=1234)([batch[3], batch[0]])
    n3 = len(batch[3]["input_ids"])  # an example's mask does not depend on the batch it is in
    assert torch.equal(again["input_ids"][0, :n3], first["input_ids"][3, :n3])
    other_seed = MaskingCollator(MASK, VOCAB, SPECIALS, pad_id=PAD, seed=99)
    assert not torch.equal(other_seed(batch)["labels"], first["labels"])
    train = MaskingCollator(MASK, VOCAB, SPECIALS, pad_id=PAD)
    assert not torch.equal(train(batch)["labels"], train(batch)["labels"])


# -- tokenizer training ---------------------------------------------------------------------------

WORDS = "the a cat dog sat ran over under quickly slowly happy tokenizer tokenization played playing player".split()


@pytest.fixture()
def small_corpus(tmp_path: Path) -> Path:
    rng = random.Random(0)
    lines = []
    for i in range(400):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))
        lines.append(words + rng.choice([".", ",", "!", "?"]))
        if i % 5 == 4:
            lines.append("")
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_bpe_tokenizer_roundtrip(small_corpus: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = train_tokenizer(read_documents([small_corpus]), "bpe", 300, tmp_path / "bpe")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "bpe")
    assert len(reloaded) == len(tok) <= 300 and len(tok) > 257
    assert reloaded.get_vocab() == tok.get_vocab()
    assert reloaded.eos_token == reloaded.pad_token == "<|endoftext|>" and reloaded.eos_token_id == 0
    assert reloaded.convert_ids_to_tokens(0) == "<|endoftext|>"
    texts = ["the cat sat over the dog.", "  Unseen ,  words 's\n\nand ünïcödé 日本語 ✓ ", "playing player!"]
    for text in texts:
        ids = reloaded(text)["input_ids"]
        assert ids == tok(text)["input_ids"] and EOS not in ids
        assert reloaded.decode(ids) == text
    assert len(reloaded("the cat sat over the dog")["input_ids"]) < len("the cat sat over the dog") / 2


def test_train_wordpiece_tokenizer(small_corpus: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = train_tokenizer(read_documents([small_corpus]), "wordpiece", 300, tmp_path / "wp", lowercase=True)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "wp")
    assert len(reloaded) == len(tok) <= 300
    assert reloaded.get_vocab() == tok.get_vocab()
    specials = ["pad", "unk", "cls", "sep", "mask"]
    assert [getattr(reloaded, f"{s}_token_id") for s in specials] == [0, 1, 2, 3, 4]
    assert [getattr(reloaded, f"{s}_token") for s in specials] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert any(t.startswith("##") for t in reloaded.get_vocab())
    ids = reloaded("The Cat sat quickly")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and ids == tok("the cat sat quickly")["input_ids"]
    assert reloaded.decode(ids, skip_special_tokens=True) == "the cat sat quickly"
    pair = reloaded("the cat", "a dog")
    assert pair["input_ids"].count(3) == 2 and pair["token_type_ids"][-1] == 1
    assert reloaded.model_max_length == 1024


def test_cached_tokenizer_hits_and_misses(small_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    calls = []
    real_train = tokenizer_training.train_tokenizer

    def counting_train(*args, **kwargs):
        calls.append(args[2])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tokenizer_training, "train_tokenizer", counting_train)
    cache = tmp_path / "cache"
    first = cached_tokenizer([small_corpus], "bpe", 300, cache)
    second = cached_tokenizer([small_corpus], "bpe", 300, cache)
    assert calls == [300] and first.get_vocab() == second.get_vocab()
    cached_tokenizer([small_corpus], "bpe", 280, cache)
    assert calls == [300, 280] and len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
    with small_corpus.open("a") as f:
        f.write("a changed corpus retrains\n")
    cached_tokenizer([small_corpus], "bpe", 300, cache)
    assert calls == [300, 280, 300]
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.mark.skipif(not TINY_SHAKESPEARE.exists(), reason=f"{TINY_SHAKESPEARE} is not available")
def test_bpe_on_tinyshakespeare(tmp_path: Path) -> None:
    tok = train_tokenizer(read_documents([TINY_SHAKESPEARE]), "bpe", 1000, tmp_path / "tok")
    assert len(tok) == 1000
    text = TINY_SHAKESPEARE.read_text()[:5000]
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) / 2
