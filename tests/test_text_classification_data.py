"""Text classification data: real file formats load, bad input fails with file/line/column, tokens are cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import needs_shared
from lmforge.data.sources import columns_of, read_table
from lmforge.tasks.text_classification.data import TextClassificationDataModule
from lmforge.utils.errors import ConfigError, DataError
from lmforge.utils.resolvers import minilm_path


def dm(tmp_path: Path, **kw) -> TextClassificationDataModule:
    kw.setdefault("source", "local")
    return TextClassificationDataModule(tokenizer=minilm_path(), cache_dir=str(tmp_path / "cache"), **kw)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_sst2_tsv_loads_as_it_is():
    rows = read_table(needs_shared("sst2", "train.tsv"))
    assert len(rows) == 67349 and columns_of(rows[0]) == ["sentence", "label"]
    assert rows[0]["label"] in ("0", "1")


def test_stsb_tsv_quotes_are_ordinary_characters():
    path = needs_shared("stsb", "train.tsv")
    rows = read_table(path)
    assert len(rows) == 5749  # a quoting TSV reader would merge rows at the first unbalanced quote
    assert any('"' in r["sentence1"] + r["sentence2"] for r in rows)
    assert all(0.0 <= float(r["score"]) <= 5.0 for r in rows)


def test_stsb_is_detected_as_a_regression_pair_task(tmp_path):
    d = dm(tmp_path, train_file=str(needs_shared("stsb", "train.tsv")),
           validation_file=str(needs_shared("stsb", "dev.tsv")), max_train_samples=200, max_eval_samples=50)
    d.prepare_data()
    d.setup("fit")
    assert d.meta["columns"] == {"text": "sentence1", "pair": "sentence2", "label": "score"}
    assert d.label_names is None and d.model_facts()["num_labels"] == 1
    batch = next(iter(d.train_dataloader()))
    assert batch["labels"].dtype.is_floating_point
    assert (batch["token_type_ids"] == 1).any()  # the second sentence is marked as segment B


def test_csv_with_quoted_commas_and_newlines(tmp_path):
    path = write(tmp_path / "t.csv", 'text,label\n"Good, really good",pos\n"line one\nline two",neg\nmeh,neg\nyay,pos\n')
    rows = read_table(path)
    assert rows[0]["text"] == "Good, really good" and rows[1]["text"] == "line one\nline two"


def test_jsonl_json_and_parquet_give_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "a fine day", "label": "pos"}, {"text": "a bad day", "label": "neg"}]
    write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    write(tmp_path / "b.json", json.dumps(rows))
    write(tmp_path / "c.json", json.dumps({"data": rows}))
    write(tmp_path / "d.json", json.dumps({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    for name in ("a.jsonl", "b.json", "c.json", "d.json", "e.parquet"):
        got = [{k: r[k] for k in columns_of(r)} for r in read_table(tmp_path / name)]
        assert got == rows, name


def test_tsv_with_a_bom_and_crlf(tmp_path):
    path = tmp_path / "w.tsv"
    path.write_bytes("\ufefftext\tlabel\r\nhello there\t1\r\nbye now\t0\r\n".encode("utf-8"))
    rows = read_table(path)
    assert [{k: r[k] for k in columns_of(r)} for r in rows] == [{"text": "hello there", "label": "1"},
                                                                 {"text": "bye now", "label": "0"}]
    assert [r["__line__"] for r in rows] == [2, 3]


def test_missing_file_names_the_key_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.train_file=.*nope.csv: file not found"):
        dm(tmp_path, train_file=str(tmp_path / "nope.csv")).prepare_data()


def test_wrong_column_lists_the_columns_there(tmp_path):
    path = write(tmp_path / "t.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    with pytest.raises(DataError) as e:
        dm(tmp_path, train_file=str(path), text_column="review").prepare_data()
    msg = str(e.value)
    assert "data.text_column='review'" in msg and "t.tsv" in msg and "sentence, label" in msg


def test_validation_label_missing_from_train(tmp_path):
    train = write(tmp_path / "train.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    val = write(tmp_path / "val.jsonl", '{"text": "fine", "label": "pos"}\n{"text": "so-so", "label": "neutral"}\n')
    with pytest.raises(DataError) as e:
        dm(tmp_path, train_file=str(train), validation_file=str(val)).prepare_data()
    msg = str(e.value)
    assert "val.jsonl:2:" in msg and "'neutral'" in msg and "neg, pos" in msg


def test_empty_text_names_file_and_line(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tlabel\ngood\t1\n  \t0\nbad\t0\n")
    with pytest.raises(DataError) as e:
        dm(tmp_path, train_file=str(path)).prepare_data()
    assert "t.tsv:3:" in str(e.value) and "'text'" in str(e.value)


def test_malformed_jsonl_line_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n')
    with pytest.raises(DataError) as e:
        dm(tmp_path, train_file=str(path)).prepare_data()
    assert "t.jsonl:2:" in str(e.value) and "malformed JSON" in str(e.value)


def test_tsv_row_with_wrong_field_count(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(DataError, match=r"t.tsv:3: expected 2 fields"):
        read_table(path)


def test_unknown_extension_and_source(tmp_path):
    with pytest.raises(DataError, match=r"\.xlsx"):
        dm(tmp_path, train_file=str(write(tmp_path / "t.xlsx", "x"))).prepare_data()
    with pytest.raises(ConfigError, match="data.source=ftp"):
        dm(tmp_path, source="ftp")


def test_hub_dataset_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    d = dm(tmp_path, source="hub", hub_name="lmforge-no-such-org/no-such-dataset")
    with pytest.raises(DataError) as e:
        d.prepare_data()
    msg = str(e.value)
    assert "data.hub_name=lmforge-no-such-org/no-such-dataset" in msg and "data=local" in msg


def test_integer_labels_with_names_and_carved_validation(tmp_path):
    lines = "".join(f"{'great' if i % 2 else 'awful'} thing {i}\t{i % 2}\n" for i in range(40))
    path = write(tmp_path / "t.tsv", "sentence\tlabel\n" + lines)
    d = dm(tmp_path, train_file=str(path), label_names=["negative", "positive"], validation_fraction=0.25)
    d.setup("fit")
    assert d.meta["sizes"] == {"train": 30, "validation": 10}
    assert d.model_facts()["id2label"] == {0: "negative", 1: "positive"}


def test_tokenization_is_cached_and_keyed(tmp_path, monkeypatch):
    lines = "".join(f"{'great' if i % 2 else 'awful'} thing {i}\t{i % 2}\n" for i in range(20))
    path = write(tmp_path / "t.tsv", "sentence\tlabel\n" + lines)
    first = dm(tmp_path, train_file=str(path))
    first.prepare_data()
    assert first.cache_hit is False
    calls = []
    monkeypatch.setattr(TextClassificationDataModule, "_tokenize", lambda self, *a: calls.append(1) or {})
    again = dm(tmp_path, train_file=str(path))
    again.prepare_data()
    assert again.cache_hit is True and calls == [] and again.cache.dir == first.cache.dir
    assert dm(tmp_path, train_file=str(path), max_length=16).cache.dir != first.cache.dir
    write(tmp_path / "t.tsv", "sentence\tlabel\n" + lines + "one more\t1\n")
    assert dm(tmp_path, train_file=str(path)).cache.dir != first.cache.dir


def test_dynamic_padding_and_length_grouping(tmp_path):
    lines = "".join(f"{'word ' * (1 + i % 17)}\t{i % 2}\n" for i in range(200))
    path = write(tmp_path / "t.tsv", "text\tlabel\n" + lines)
    d = dm(tmp_path, train_file=str(path), batch_size=8, max_length=64)
    d.setup("fit")
    widths = {b["input_ids"].shape[1] for b in d.train_dataloader()}
    assert len(widths) > 1 and max(widths) <= 64  # padded per batch, never to max_length
    g = dm(tmp_path, train_file=str(path), batch_size=8, max_length=64, group_by_length=True)
    g.setup("fit")
    pad_plain = sum(int((b["attention_mask"] == 0).sum()) for b in d.train_dataloader())
    pad_grouped = sum(int((b["attention_mask"] == 0).sum()) for b in g.train_dataloader())
    assert pad_grouped < pad_plain / 3
