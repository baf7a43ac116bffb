"""The bad-input catalogue, every task: each fault a user's files or command line can hold, and the message it
gets. Every case fails (or reads) before any model is loaded: the datamodule reads, checks and tokenizes, or
``check_config`` refuses the value.

Faults: a byte that is not UTF-8 (file:line and byte offset), an empty file / a header without rows, a split
that filtering empties, a 10 MB line (refused by data.max_line_bytes without reading it whole; a corpus for
pretraining takes it as text, tokenized in pieces), CRLF line ends and a byte-order mark (read as LF/no BOM),
config values of the wrong type or range.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, compose_cfg
from lmforge.train import build_datamodule, train
from lmforge.utils.errors import ConfigError, DataError

MARK = "MARKER"  # a word every sample file holds once; the faults are made by replacing it
LATIN1 = "caf\xe9".encode("latin1")  # what a Windows-1252 export of "café" holds: 0xe9 is not UTF-8 there


# -- one small valid file per task and format; the MARK word sits on a known line -----------------------------
def _tc_csv() -> str:
    return "text,label\n" + "".join(f"a good film {i},1\na bad film {i},0\n" for i in range(4)) + f"a {MARK} film,1\n"


def _tc_jsonl() -> str:
    rows = [{"text": f"film {i}", "label": i % 2} for i in range(8)] + [{"text": f"a {MARK} film", "label": 1}]
    return "".join(json.dumps(r) + "\n" for r in rows)


def _conll() -> str:
    sent = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\n"
    return "-DOCSTART- O\n\n" + sent * 4 + f"{MARK} B-LOC\nsays O\n"


def _ner_jsonl() -> str:
    rows = [{"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]}] * 6
    rows = rows + [{"tokens": [MARK, "says"], "tags": ["B-LOC", "O"]}]
    return "".join(json.dumps(r) + "\n" for r in rows)


def _squad_json() -> str:
    qas = [{"id": f"q{i}", "question": f"Where is the ship {i}?", "answers": [{"text": "Oslo", "answer_start": 16}]}
           for i in range(3)] + [{"id": "qm", "question": f"Where is {MARK}?", "answers": [{"text": "Oslo", "answer_start": 16}]}]
    arts = [{"title": f"T{a}", "paragraphs": [{"context": "The ship sails, Oslo is its home.", "qas": qas}]}
            for a in range(3)]
    return json.dumps({"version": "1.1", "data": arts}, indent=1) + "\n"


def _qa_jsonl() -> str:
    rows = [{"id": str(i), "title": f"T{i}", "question": "Where?", "context": "It is in Oslo.",
             "answers": {"text": ["Oslo"], "answer_start": [9]}} for i in range(6)]
    rows.append({"id": "m", "title": "Tm", "question": f"Where is {MARK}?", "context": "It is in Oslo.",
                 "answers": {"text": ["Oslo"], "answer_start": [9]}})
    return "".join(json.dumps(r) + "\n" for r in rows)


def _mt_jsonl() -> str:
    rows = [{"translation": {"de": f"ein Haus {i}", "en": f"a house {i}"}} for i in range(8)]
    rows.append({"translation": {"de": "ein Haus", "en": f"a {MARK} house"}})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _sum_csv() -> str:
    return "dialogue,summary\n" + "".join(f"Anna: hi {i},Anna says hi\n" for i in range(8)) + f"Ben: {MARK},Ben says it\n"


def _se_csv() -> str:
    return "sentence1,sentence2,score\n" + "".join(f"a cat {i},a dog {i},{i % 5}\n" for i in range(8)) + \
        f"the sun,the {MARK},2\n"


def _it_jsonl() -> str:
    rows = [{"prompt": f"Say hi {i}", "completion": "hi"} for i in range(8)] + [{"prompt": f"Say {MARK}", "completion": "ok"}]
    return "".join(json.dumps(r) + "\n" for r in rows)


def _corpus() -> str:
    return "".join(f"Once upon a time there was a fox number {i}.\nIt ran.\n\n" for i in range(8)) + f"The {MARK} end.\n"


# (task, format) -> (file name, content, the key it is passed with)
CASES = {
    ("text_classification", "csv"): ("t.csv", _tc_csv, "train_file"),
    ("text_classification", "jsonl"): ("t.jsonl", _tc_jsonl, "train_file"),
    ("token_classification", "conll"): ("t.conll", _conll, "train_file"),
    ("token_classification", "jsonl"): ("t.jsonl", _ner_jsonl, "train_file"),
    ("question_answering", "squad"): ("t.json", _squad_json, "train_file"),
    ("question_answering", "jsonl"): ("t.jsonl", _qa_jsonl, "train_file"),
    ("translation", "jsonl"): ("t.jsonl", _mt_jsonl, "train_file"),
    ("translation", "parallel"): ("t.en", None, "train_file"),  # t.de + t.en, the fault in t.en
    ("summarization", "csv"): ("t.csv", _sum_csv, "train_file"),
    ("sentence_embedding", "csv"): ("t.csv", _se_csv, "train_file"),
    ("masked_lm", "txt"): ("t.txt", _corpus, "train_files"),
    ("causal_lm", "txt"): ("t.txt", _corpus, "train_files"),
    ("instruction_tuning", "jsonl"): ("t.jsonl", _it_jsonl, "train_file"),
}
IDS = [f"{t}-{f}" for t, f in CASES]


def write_case(folder: Path, task: str, fmt: str, mark: bytes = MARK.encode(), crlf: bool = False,
               bom: bool = False) -> tuple[Path, str]:
    """The case's file(s) in ``folder`` with MARK replaced by ``mark``; (the file holding it, the file override)."""
    folder.mkdir(parents=True, exist_ok=True)
    name, make, key = CASES[task, fmt]

    def put(path: Path, text: str) -> Path:
        data = text.replace("\n", "\r\n") if crlf else text
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8").replace(MARK.encode(), mark))
        return path

    if fmt == "parallel":
        put(folder / "t.de", "".join(f"ein Haus {i}\n" for i in range(9)))
        path = put(folder / "t.en", "".join(f"a house {i}\n" for i in range(8)) + f"a {MARK} house\n")
        return path, f"data.{key}={folder / 't'}"
    path = put(folder / name, make())
    return path, f"data.{key}={path}"


def datamodule(tmp_path: Path, cache_dir: Path, task: str, file_override: str, *extra: str):
    data = "data=text" if task in ("masked_lm", "causal_lm") else "data=local"
    cfg = compose_cfg([f"task={task}", data, file_override, *TINY, *extra], tmp_path / "run", cache_dir)
    return build_datamodule(cfg)


# -- non-UTF-8 bytes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,fmt", list(CASES), ids=IDS)
def test_a_byte_that_is_not_utf8_is_named_with_its_line_and_offset(tmp_path, cache_dir, task, fmt):
    path, override = write_case(tmp_path / "data", task, fmt, mark=LATIN1)
    data = path.read_bytes()
    offset = data.index(LATIN1) + 3  # the 0xe9 of caf\xe9
    line = data[:offset].count(b"\n") + 1
    dm = datamodule(tmp_path, cache_dir, task, override)
    with pytest.raises(DataError) as e:
        dm.prepare_data()
    assert str(e.value).startswith(f"{path}:{line}: not valid UTF-8 (byte 0xe9 at byte offset {offset}: ")
    assert "iconv -f cp1252 -t utf-8" in str(e.value)


# -- empty files, headers without rows -------------------------------------------------------------------------
EMPTY = [
    ("text_classification", "t.csv", "", "the file is empty (0 bytes or only a byte-order mark); expected a header"),
    ("text_classification", "t.csv", "text,label\r\n", "a header line (text, label) but no rows below it"),
    ("text_classification", "t.tsv", "\ufeffsentence\tlabel\n\n", "a header line (sentence, label) but no rows below it"),
    ("text_classification", "t.jsonl", "", "the file is empty; expected one JSON object per line"),
    ("text_classification", "t.jsonl", "\n\n", "no records (2 blank lines); expected one JSON object per line"),
    ("text_classification", "t.json", "[]", "no records (an empty list)"),
    ("text_classification", "t.parquet", None, "no rows (a parquet file with the columns text, label but no rows)"),
    ("token_classification", "t.conll", "", "the file is empty; expected a token and its tag per line"),
    ("token_classification", "t.conll", "-DOCSTART- -X- O\n\n\n", "no sentences in its 3 lines (only blank lines and -DOCSTART-)"),
    ("question_answering", "t.json", '{"version": "1.1", "data": []}', "a SQuAD file without articles"),
    ("question_answering", "t.json", "", "the file is empty; expected SQuAD JSON"),
    ("question_answering", "t.csv", "question,context,answers\n", "a header line (question, context, answers) but no rows"),
    ("translation", "t.tsv", "de\ten\n", "a header line (de, en) but no rows below it"),
    ("translation", "t.en", "", "the file is empty; expected one sentence per line"),
    ("summarization", "t.csv", "dialogue,summary\n", "a header line (dialogue, summary) but no rows below it"),
    ("sentence_embedding", "t.csv", "sentence1,sentence2,score\n", "a header line (sentence1, sentence2, score) but no rows"),
    ("instruction_tuning", "t.jsonl", "", "the file is empty; expected one JSON object per line"),
    ("masked_lm", "t.txt", "\n \n\n", "empty corpus: no text in"),
    ("causal_lm", "t.txt", "", "empty corpus: no text in"),
]


@pytest.mark.parametrize("task,name,text,message", EMPTY, ids=[f"{t}-{n}-{i}" for i, (t, n, _, _) in enumerate(EMPTY)])
def test_an_empty_file_or_a_header_without_rows_is_named(tmp_path, cache_dir, task, name, text, message):
    path = tmp_path / name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}), path)
    else:
        path.write_bytes(text.encode("utf-8"))
    key = "train_files" if task in ("masked_lm", "causal_lm") else "train_file"
    override = f"data.{key}={path}"
    if name == "t.en":  # parallel files: the German side is fine, the English one is empty
        (tmp_path / "t.de").write_text("ein Haus\n", encoding="utf-8")
        override = f"data.{key}={tmp_path / 't'}"
    dm = datamodule(tmp_path, cache_dir, task, override)
    with pytest.raises(DataError) as e:
        dm.prepare_data()
    assert str(path) in str(e.value) and message in str(e.value)


# -- a split that filtering empties ----------------------------------------------------------------------------
def test_split_empty_after_skipping_empty_pairs(tmp_path, cache_dir):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"translation": {"de": f"Haus {i}", "en": ""}}) + "\n" for i in range(5)))
    dm = datamodule(tmp_path, cache_dir, "translation", f"data.train_file={path}", "data.skip_empty=true",
                    "data.validation_fraction=0")
    with pytest.raises(DataError, match=re.escape(f"{path}: the train split is empty after filtering: all 5 pairs "
                                                  "read have an empty source or target, and data.skip_empty=true")):
        dm.prepare_data()


def test_split_empty_after_dropping_long_conversations(tmp_path, cache_dir):
    path = tmp_path / "t.jsonl"
    long = " ".join(["word"] * 50)
    path.write_text("".join(json.dumps({"prompt": long, "completion": long}) + "\n" for _ in range(6)))
    dm = datamodule(tmp_path, cache_dir, "instruction_tuning", f"data.train_file={path}", "data.max_length=16",
                    "data.validation_fraction=0")
    with pytest.raises(DataError) as e:
        dm.prepare_data()
    assert str(e.value).startswith(f"{path}: the train split is empty after filtering: all 6 conversations read "
                                   "were dropped (6 longer than data.max_length=16 tokens (data.truncation=drop))")
    assert "data.truncation=truncate" in str(e.value)


def test_split_with_every_label_hidden_is_named(tmp_path, cache_dir):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "".join(f"film {i},-1\n" for i in range(6)))
    dm = datamodule(tmp_path, cache_dir, "text_classification", f"data.train_file={path}")
    with pytest.raises(DataError, match=re.escape(f"{path}: the labels in column 'label' are all missing or -1")):
        dm.prepare_data()


def test_corpus_shorter_than_a_block_is_named(tmp_path, cache_dir):
    path = tmp_path / "t.txt"
    path.write_text("a tiny tale.\n\nanother one.\n\nand a third.\n")
    dm = datamodule(tmp_path, cache_dir, "causal_lm", f"data.train_files={path}", "data.validation_fraction=0")
    with pytest.raises(DataError, match=r"the train split has about \d+ tokens, fewer than one block of "
                                        r"data.block_size=128"):
        dm.prepare_data()


# -- a 10 MB line ------------------------------------------------------------------------------------------------
BIG = 10_000_000
LINE_CASES = [c for c in CASES if c[1] != "txt"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@pytest.mark.parametrize("task,fmt", LINE_CASES, ids=[f"{t}-{f}" for t, f in LINE_CASES])
def test_a_10mb_line_is_refused_without_reading_it_whole(tmp_path, cache_dir, task, fmt):
    big = ("lorem ipsum " * (BIG // 12 + 1))[:BIG].encode()
    if fmt == "conll":
        big = big.replace(b" ", b"x")  # one 10 MB token
    path, override = write_case(tmp_path / "data", task, fmt, mark=big)
    data = path.read_bytes()
    start = data.index(big)
    line = data[:start].count(b"\n") + 1
    size = len(data.split(b"\n")[line - 1])
    dm = datamodule(tmp_path, cache_dir, task, override)
    del data
    before = _peak_mb()
    with pytest.raises(DataError) as e:
        dm.prepare_data()
    assert _peak_mb() - before < 500
    if fmt == "squad":  # one JSON document: its values are checked, not its lines
        assert re.match(rf"{re.escape(str(path))}: question qm \(data\[\d\]\.paragraphs\[0\]\.qas\[3\]\): column "
                        rf"'question' holds a text of 10,000,0\d\d characters, longer than data.max_line_bytes=1,000,000",
                        str(e.value)), str(e.value)
        return
    assert str(e.value).startswith(f"{path}:{line}: a line of {size:,} bytes, longer than "
                                   "data.max_line_bytes=1,000,000;")
    assert "raise the limit with data.max_line_bytes=<bytes>" in str(e.value)


def test_a_long_line_within_a_raised_limit_is_read(tmp_path, cache_dir):
    long = "very " * 400_000  # 2 MB
    path, override = write_case(tmp_path / "data", "text_classification", "csv", mark=long.encode())
    dm = datamodule(tmp_path, cache_dir, "text_classification", override, "data.max_line_bytes=3000000")
    rows = dm.read_file([path], "data.train_file")
    assert rows[-1]["text"] == f"a {long} film"


def test_a_10mb_line_of_a_corpus_is_text_tokenized_in_pieces(tmp_path):
    from transformers import AutoTokenizer

    from lmforge.data.text_corpus import pieces, read_documents, token_ids
    from lmforge.utils.resolvers import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    text = ("the old fox ran far. " * (BIG // 21 + 1))[:BIG]
    path = tmp_path / "c.txt"
    path.write_text(f"a short tale.\n\n{text}\n\nthe end.\n", encoding="utf-8")
    docs = list(read_documents([path], "blank_line"))
    assert [len(d) for d in docs] == [13, BIG, 8]
    head = docs[1][:250_000]
    assert list(token_ids(tok, head, 20_000)) == tok(head, add_special_tokens=False)["input_ids"]  # pieces cut at spaces
    assert "".join(pieces(docs[1])) == docs[1]
    before = _peak_mb()
    ids = token_ids(tok, docs[1])
    assert len(ids) > 2_000_000 and _peak_mb() - before < 500
    # the pretraining token store encodes through the same piecewise tokenizer: the same tokens, memory still bounded
    import numpy as np

    from lmforge.data.token_store import encode_documents

    tokens, lengths = encode_documents(tok, docs, tok.sep_token_id, np.uint16)
    short = tok("a short tale.", add_special_tokens=False)["input_ids"]
    assert list(lengths) == [len(short) + 1, len(ids) + 1, lengths[2]]
    assert list(tokens[: len(short)]) == short and list(tokens[len(short) + 1: len(short) + 1 + len(ids)]) == list(ids)
    assert _peak_mb() - before < 500


# -- CRLF line ends and a byte-order mark ------------------------------------------------------------------------
def _plain(rows: list) -> list:
    """Rows without their place keys (which name the file)."""
    return [{k: v for k, v in r.items() if not k.startswith("__")} if isinstance(r, dict) else r for r in rows]


@pytest.mark.parametrize("task,fmt", list(CASES), ids=IDS)
def test_crlf_and_a_bom_read_as_lf_without_bom(tmp_path, cache_dir, task, fmt):
    lf, lf_override = write_case(tmp_path / "lf", task, fmt)
    win, win_override = write_case(tmp_path / "win", task, fmt, crlf=True, bom=True)
    assert win.read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in win.read_bytes()
    dm = datamodule(tmp_path, cache_dir, task, lf_override)
    key = "data.train_files" if fmt == "txt" else "data.train_file"
    paths = (lambda p: [p.with_suffix(".de"), p] if fmt == "parallel" else [p])
    want, got = dm.read_file(paths(lf), key), dm.read_file(paths(win), key)
    assert _plain(got) == _plain(want) and len(got) >= 7
    dumped = json.dumps(_plain(got), ensure_ascii=False)
    assert "\ufeff" not in dumped and "\\r" not in dumped and MARK in dumped


# -- config values -----------------------------------------------------------------------------------------------
CONFIG = [
    (["data.batch_size=abc"], "data.batch_size=abc: expected a positive integer (examples per batch on each device), "
                              "got the text 'abc'"),
    (["data.batch_size=0"], "data.batch_size=0: expected a positive integer"),
    (["data.batch_size=-8"], "data.batch_size=-8: expected a positive integer"),
    (["data.batch_size=2.5"], "data.batch_size=2.5: expected a positive integer (examples per batch on each device), "
                              "got float 2.5"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0: expected a positive integer"),
    (["optimizer.lr=0"], "optimizer.lr=0: expected a positive learning rate"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001: expected a positive learning rate"),
    (["optimizer.lr=fast"], "optimizer.lr=fast: expected a positive number (the learning rate, e.g. optimizer.lr=3e-5), "
                            "got the text 'fast'"),
    (["data.max_length=0"], "data.max_length=0: expected a positive integer (tokens per example)"),
    (["data.max_length=long"], "data.max_length=long: expected a positive integer (tokens per example), got the text"),
    (["task=causal_lm", "data.block_size=-128"], "data.block_size=-128: expected a positive integer (tokens per block)"),
    (["task=translation", "data.max_source_length=0"], "data.max_source_length=0: expected a positive integer"),
    (["task=summarization", "data.max_target_length=-1"], "data.max_target_length=-1: expected a positive integer"),
    (["task=question_answering", "data.doc_stride=-1"], "data.doc_stride=-1: expected an integer >= 0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: expected a positive integer (optimizer steps; -1: train by "
                              "epochs) or -1"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5: expected a positive integer"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: expected a positive integer (passes over the training data"),
    (["data.max_train_samples=0"], "data.max_train_samples=0: expected a positive integer (training rows to keep"),
    (["data.num_workers=-1"], "data.num_workers=-1: expected an integer >= 0"),
    (["data.validation_fraction=1.5"], "data.validation_fraction=1.5: expected a fraction in [0, 1)"),
]


@pytest.mark.parametrize("overrides,message", CONFIG, ids=[" ".join(o) for o, _ in CONFIG])
def test_a_config_value_of_the_wrong_type_or_range(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as e:
        train(make_cfg([*TINY, *overrides]))
    assert str(e.value).startswith(message)


def test_config_values_that_mean_unset_pass(make_cfg):
    from lmforge.utils.checks import check_values

    check_values(make_cfg([*TINY, "trainer.max_steps=-1", "trainer.max_epochs=3", "data.eval_batch_size=null"]))
    check_values(make_cfg(["task=causal_lm", "trainer.max_epochs=-1", "trainer.max_steps=10"]))


def test_the_command_line_prints_the_error_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "data.batch_size=abc", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: data.batch_size=abc: expected a positive integer"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_prediction_inputs_get_the_same_checks(tmp_path, cache_dir):
    path, override = write_case(tmp_path / "data", "text_classification", "csv")
    dm = datamodule(tmp_path, cache_dir, "text_classification", override)
    txt = tmp_path / "inputs.txt"
    txt.write_bytes(b"\xef\xbb\xbfa fine film\r\n\r\nun caf\xe9 noir\r\n")
    with pytest.raises(DataError, match=re.escape(f"{txt}:3: not valid UTF-8 (byte 0xe9 at byte offset 24: ")):
        dm.read_inputs(txt)
    txt.write_bytes(b"\xef\xbb\xbfa fine film\r\n\r\nthe end\r\n")
    assert dm.read_inputs(txt) == [{"text": "a fine film"}, {"text": "the end"}]
