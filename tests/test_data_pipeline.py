"""The one data pipeline (lmforge.data.datamodule) that every task's datamodule is built on.

Splits (carved by data.split_seed, hub names mapped, unlabelled splits kept for prediction only,
no test split replaced by another), the evaluation file, prediction inputs, the resumable sampler
(the exact batches after a mid-epoch resume), and the trained-tokenizer cache key.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lmforge.data import tokenizer_training
from lmforge.data.samplers import ResumableSampler
from lmforge.tasks.causal_lm.data import CausalLMDataModule
from lmforge.tasks.masked_lm.data import MaskedLMDataModule
from lmforge.utils.errors import DataError
from test_text_classification_data import dm as tc
from test_text_classification_data import write

WORDS = "the a cat dog sat ran over under quickly slowly happy fox hen barn field river stone".split()


def table(tmp_path: Path, n: int = 40, name: str = "t.tsv") -> Path:
    rng = random.Random(n)
    lines = "".join(f"{' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))} {i}\t{i % 2}\n" for i in range(n))
    return write(tmp_path / name, "sentence\tlabel\n" + lines)


def corpus(tmp_path: Path, n_docs: int = 120, files: int = 2) -> list[Path]:
    rng = random.Random(0)
    paths = []
    for k in range(files):
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + f" doc{k}x{j}." for j in range(n_docs // files)]
        paths.append(write(tmp_path / f"part{k}.txt", "\n\n".join(docs) + "\n"))
    return paths


def texts_of(dm, split: str) -> list[str]:
    return [dm.tokenizer.decode(x["input_ids"], skip_special_tokens=True) for x in dm.datasets[split]]


# -- splits -------------------------------------------------------------------------------------


def test_carved_split_follows_split_seed_not_the_run_seed(tmp_path):
    path = table(tmp_path)
    runs = {seed: tc(tmp_path, train_file=str(path), validation_fraction=0.25, seed=seed) for seed in (1, 2)}
    for d in runs.values():
        d.setup("fit")
    assert runs[1].cache.dir == runs[2].cache.dir  # a seed sweep shares the split and the token cache
    assert texts_of(runs[1], "validation") == texts_of(runs[2], "validation")
    other = tc(tmp_path, train_file=str(path), validation_fraction=0.25, split_seed=7)
    other.setup("fit")
    assert other.cache.dir != runs[1].cache.dir and texts_of(other, "validation") != texts_of(runs[1], "validation")
    assert len(texts_of(other, "validation")) == 10 and len(texts_of(other, "train")) == 30


def test_no_test_split_is_never_replaced_by_validation(tmp_path):
    d = tc(tmp_path, train_file=str(table(tmp_path)), validation_file=str(table(tmp_path, 10, "v.tsv")))
    d.setup("fit")
    assert d.labelled_splits() == ["train", "validation"]
    with pytest.raises(DataError, match=r"no test split .*data.test_file=.*labelled splits: train, validation"):
        d.test_dataloader()
    assert len(list(d.val_dataloader())) == 1


def test_unlabelled_test_file_is_kept_for_prediction_only(tmp_path):
    glue_test = write(tmp_path / "test.tsv", "index\tsentence\n0\ta fine film\n1\ta dull one\n")
    d = tc(tmp_path, train_file=str(table(tmp_path)), test_file=str(glue_test), label_names=["negative", "positive"])
    d.setup("fit")
    assert d.labelled_splits() == ["train", "validation"] and len(d.datasets["test"]) == 2
    assert "labels" not in d.datasets["test"][0]
    with pytest.raises(DataError, match="carries no labels: it is kept for prediction only"):
        d.test_dataloader()


def fake_glue(with_test: bool = True):
    """GLUE SST-2 as ``datasets`` holds it: a class-label column, and -1 for the hidden test labels."""
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = {"train": [(f"{w} film {i}", i % 2) for i, w in enumerate(WORDS * 3)],
            "dev": [(f"{w} show", i % 2) for i, w in enumerate(WORDS)]}
    if with_test:
        rows["test"] = [(f"{w} book", -1) for w in WORDS]
    return datasets.DatasetDict({s: datasets.Dataset.from_dict(
        {"sentence": [t for t, _ in rs], "idx": list(range(len(rs))), "label": [y for _, y in rs]}, features=features)
        for s, rs in rows.items()})


@pytest.mark.parametrize("with_test", [True, False])
def test_hub_glue_with_hidden_test_labels(tmp_path, monkeypatch, with_test):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, **kw: fake_glue(with_test))
    d = tc(tmp_path, source="hub", hub_name="glue", hub_config="sst2")
    d.prepare_data()
    d.setup("fit")
    assert d.labelled_splits() == ["train", "validation"]  # "dev" is the validation split; test labels are -1
    assert d.meta["sizes"]["validation"] == len(WORDS)  # nothing carved: the hub's own dev split
    assert ("test" in d.datasets) == with_test  # never a copy of validation
    assert d.model_facts()["id2label"] == {0: "negative", 1: "positive"}  # the dataset's class names
    with pytest.raises(DataError, match="no labels" if with_test else "no test split"):
        d.test_dataloader()
    assert next(iter(d.val_dataloader()))["labels"].tolist()[:2] == [0, 1]


# -- the evaluation file -------------------------------------------------------------------------


def test_eval_file_is_the_split_file_read_with_the_task_checks(tmp_path):
    f = write(tmp_path / "new.csv", "review,sentiment\nI loved it.,positive\nA dull movie.,negative\nGreat!,positive\n")
    d = tc(tmp_path, source="sample", eval_file=str(f), text_column="review", label_column="sentiment",
           label_names=["negative", "positive"])
    d.setup("test")
    assert d.labelled_splits() == ["file"] and set(d.datasets) == {"file"}  # the run's own splits are not read
    assert next(iter(d.eval_dataloader("file")))["labels"].tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="labelled splits: file"):
        d.eval_dataloader("validation")
    bad = write(tmp_path / "bad.csv", "review,sentiment\nfine,positive\nmeh,neutral\n")
    with pytest.raises(DataError, match=r"bad.csv:3: label 'neutral' does not occur in data.label_names"):
        tc(tmp_path, source="local", eval_file=str(bad), text_column="review", label_column="sentiment",
           label_names=["negative", "positive"]).prepare_data()
    unlabelled = write(tmp_path / "u.tsv", "sentence\tlabel\nfine\t-1\nmeh\t-1\n")
    with pytest.raises(DataError, match=r"u.tsv: the labels in column 'label' are all missing or -1"):
        tc(tmp_path, eval_file=str(unlabelled), label_names=["negative", "positive"]).prepare_data()


def test_eval_file_for_a_language_model(tmp_path):
    train, = corpus(tmp_path, files=1)
    kw = dict(cache_dir=str(tmp_path / "cache"), block_size=16, batch_size=4, tokenizer_training={"vocab_size": 300})
    run = CausalLMDataModule(source="text", train_files=str(train), **kw)
    run.prepare_data()
    tok_dir = tmp_path / "tok"
    run.tokenizer.save_pretrained(tok_dir)  # as eval.py does: the run's exported tokenizer
    held = write(tmp_path / "held.txt", "the fox ran over the barn.\n\nthe hen sat under the stone.\n" * 20)
    d = CausalLMDataModule(tokenizer=str(tok_dir), source="text", train_files=str(train), eval_file=str(held), **kw)
    d.setup("test")
    assert d.labelled_splits() == ["file"]
    assert next(iter(d.eval_dataloader("file")))["input_ids"].shape == (4, 16)
    forced = CausalLMDataModule(tokenizer=str(tok_dir), source="text", eval_file=str(held),
                                **{**kw, "tokenizer_training": {"vocab_size": 300, "enabled": True}})
    assert not forced.train_tokenizer and forced.cache.dir == d.cache.dir  # the run's tokenizer, not a new one


# -- prediction inputs ---------------------------------------------------------------------------


def test_read_inputs_tables_and_text_files(tmp_path):
    d = tc(tmp_path, train_file=str(table(tmp_path)))
    pairs = write(tmp_path / "pairs.jsonl", '{"sentence1": "a cat", "sentence2": "a dog", "score": 1.0}\n'
                                            '{"sentence1": "a hen", "sentence2": "a fox"}\n')
    assert d.read_inputs(pairs) == [{"text": "a cat", "text_pair": "a dog"}, {"text": "a hen", "text_pair": "a fox"}]
    lines = write(tmp_path / "in.txt", "first text\n\n  \nsecond text\n")
    assert d.read_inputs(lines) == [{"text": "first text"}, {"text": "second text"}]
    empty = write(tmp_path / "e.tsv", "text\tother\nfine\tx\n  \ty\n")
    with pytest.raises(DataError, match=r"e.tsv:3: empty or non-text value '  ' in column 'text'"):
        d.read_inputs(empty)
    latin = tmp_path / "l.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"l.txt:2: not valid UTF-8"):
        d.read_inputs(latin)


def test_inputs_are_encoded_exactly_as_training_rows(tmp_path):
    path = table(tmp_path)
    d = tc(tmp_path, train_file=str(path), validation_file=str(path), max_length=8)
    d.setup("fit")
    texts = [line.split("\t")[0] for line in path.read_text().splitlines()[1:]]
    encoded = d.encode_inputs(texts)
    assert [e["input_ids"].tolist() for e in encoded] == [x["input_ids"].tolist() for x in d.datasets["train"]]
    assert max(len(e["input_ids"]) for e in encoded) == 8
    batch = d.collate(d.encode_inputs(["a cat", {"text": "the dog sat over the barn"}]))
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0].tolist()[-1] == 0
    with pytest.raises(DataError, match="input 2: empty"):
        d.encode_inputs(["fine", ""])


def test_language_model_inputs(tmp_path):
    train, = corpus(tmp_path, files=1)
    kw = dict(source="text", train_files=str(train), cache_dir=str(tmp_path / "cache"), block_size=16,
              tokenizer_training={"vocab_size": 300})
    clm = CausalLMDataModule(**kw)
    clm.prepare_data()
    assert clm.input_fields == ("text",)
    batch = clm.collate(clm.encode_inputs(["the fox", "the hen sat over the stone"]))
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # prompts padded on the left
    assert batch["input_ids"][1].tolist() == clm.tokenizer("the hen sat over the stone", add_special_tokens=False)["input_ids"]
    mlm = MaskedLMDataModule(**{**kw, "tokenizer_training": {"vocab_size": 300, "enabled": True}})
    mlm.prepare_data()
    enc = mlm.encode_inputs([f"the fox {mlm.tokenizer.mask_token} over the barn."])
    assert mlm.tokenizer.mask_token_id in enc[0]["input_ids"].tolist()
    with pytest.raises(DataError, match=r"input 1: no \[MASK\]"):
        mlm.encode_inputs(["no mask here"])


def test_shuffle_is_a_setting_of_the_language_model_datamodules(tmp_path, make_cfg):
    from lmforge.train import build_datamodule

    for task in ("causal_lm", "masked_lm"):
        cfg = make_cfg([f"task={task}", "debug=overfit", "data.tokenizer_training.vocab_size=300", "data.block_size=32"])
        assert cfg.data.shuffle is False
        d = build_datamodule(cfg)
        d.setup("fit")
        first = next(iter(d.train_dataloader()))["input_ids"]
        assert torch.equal(first, torch.stack([d.datasets["train"][i]["input_ids"] for i in range(d.batch_size)]))


# -- the resumable sampler -----------------------------------------------------------------------


def test_length_grouped_sampler_under_ddp_resumes_in_the_right_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 64, size=203).tolist()
    n, bs, world = len(lengths), 4, 2
    per_rank = n // world
    nb = -(-per_rank // bs)

    def sampler(rank: int, progress=None) -> ResumableSampler:
        return ResumableSampler(n, bs, nb, seed=5, rank=rank, world_size=world, infinite=False, drop_last=False,
                                lengths=lengths, progress=progress)

    for rank in range(world):
        epochs = []
        for e in range(3):
            s = sampler(rank)
            s.set_epoch(e)
            epochs.append(list(s))
        assert epochs[0] != epochs[1] != epochs[2] and len(epochs[1]) == per_rank
        resumed = sampler(rank, progress=lambda: (nb + 7, 7))  # restored in epoch 1, after 7 of its batches
        resumed.set_epoch(1)  # what Lightning does when it resumes epoch 1
        assert list(resumed) == epochs[1][7 * bs:]
    one = [sampler(r) for r in range(world)]
    streams = [list(s) for s in one]
    assert len(set(streams[0]) | set(streams[1])) == 2 * per_rank  # the ranks split every example once
    for k in range(per_rank // bs):  # a step's batches (one per rank) come from the same length group
        step = [lengths[i] for r in range(world) for i in streams[r][k * bs:(k + 1) * bs]]
        assert max(step) - min(step) <= 12
    assert max(lengths[i] for i in streams[0][:bs]) == max(lengths)  # the longest batch first


class Recorder(L.LightningModule):
    """A model that only records the batches it trains on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((tuple(batch["input_ids"].flatten().tolist()), tuple(batch["labels"].tolist())))
        return (self.w * batch["labels"].float().sum()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_mid_epoch_resume_trains_exactly_the_batches_of_the_uninterrupted_run(tmp_path, group_by_length):
    path = table(tmp_path, 90)

    def fit(ckpt: str | None = None, name: str = "a") -> list[tuple]:
        d = tc(tmp_path, train_file=str(path), batch_size=8, group_by_length=group_by_length, seed=3)
        model = Recorder()
        every = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=1, save_top_k=-1,
                                                    filename="{step}")
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, callbacks=[every])
        trainer.fit(model, datamodule=d, ckpt_path=ckpt)
        return model.seen

    whole = fit()
    per_epoch = len(whole) // 3
    assert per_epoch == 11 and whole[:per_epoch] != whole[per_epoch: 2 * per_epoch]  # 81 rows: 10 full + 1 short
    step = per_epoch + 4  # in the middle of epoch 1
    resumed = fit(str(tmp_path / "a" / f"step={step}.ckpt"), "b")
    assert resumed == whole[step:]


# -- the trained tokenizer -------------------------------------------------------------------------


def test_trained_tokenizer_key_has_the_model_context_and_streaming(tmp_path, make_cfg):
    from lmforge.train import build_datamodule

    def tok_dir(*overrides: str) -> Path:
        cfg = make_cfg(["task=causal_lm", "data=text", f"data.train_files={tmp_path}/part*.txt", *overrides])
        return build_datamodule(cfg).tokenizer_dir

    corpus(tmp_path)
    base = tok_dir()
    assert tok_dir() == base
    assert tok_dir("model.max_position_embeddings=512") != base  # the context is written into the tokenizer
    assert tok_dir("data.streaming=true") != base


def test_streaming_trains_its_tokenizer_on_training_documents_only(tmp_path, monkeypatch):
    files = corpus(tmp_path, 120, 3)
    trained: dict[str, list[str]] = {}
    real = tokenizer_training.train_tokenizer

    def recording(texts, kind, vocab_size, output_dir=None, *args, **kwargs):
        texts = list(texts)
        trained[Path(output_dir).name] = texts
        return real(texts, kind, vocab_size, output_dir, *args, **kwargs)

    monkeypatch.setattr(tokenizer_training, "train_tokenizer", recording)
    kw = dict(source="text", train_files=[str(f) for f in files], cache_dir=str(tmp_path / "cache"), block_size=16,
              batch_size=2, validation_fraction=0.1, tokenizer_training={"vocab_size": 300})
    memory = CausalLMDataModule(**kw)
    memory.setup("fit")  # first a run that holds the corpus in memory
    streaming = CausalLMDataModule(**kw, streaming=True)
    streaming.setup("fit")
    val_docs = streaming.read_splits()["validation"].rows
    assert val_docs == list(memory.read_splits()["validation"].rows) and len(val_docs) == 12  # the same carve (read lazily)
    # trained in a temporary folder ".<entry>.<random>" renamed into place
    used = next(t for name, t in trained.items() if name.startswith(f".{streaming.tokenizer_dir.name}."))
    assert not set(used) & set(val_docs) and len(used) == 108
    stream = streaming.train_dataloader().dataset
    streamed = list(stream._documents(stream.files))
    assert len(streamed) == 108 and not set(streamed) & set(val_docs)  # held-out documents are never streamed
