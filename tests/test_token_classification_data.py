"""Token classification without training: the CoNLL reader, tag schemes, word/sub-token alignment, windows,
the entity metric against seqeval, and bad input (each message asserted)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.data.conll import (detect_scheme, from_iob2, iob2_label_set, normalize_iob2, read_conll, to_iob2)
from lmforge.tasks.token_classification.alignment import (IGNORE, encode_words, owners, special_template,
                                                          window_starts)
from lmforge.tasks.token_classification.metrics import (EntityScores, best_labels, grouped_entities, seqeval_scores,
                                                        simple_entities)
from lmforge.utils.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lmforge.utils.resolvers import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# -- reading -----------------------------------------------------------------------------------------
def test_conll_files_as_the_world_writes_them(tmp_path):
    # BOM, CRLF, -DOCSTART-, several blank lines, tabs and spaces, no blank line at the end
    text = ("\ufeff-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\r\nGerman JJ B-NP B-MISC\r\n"
            "\r\n\r\n\r\nPeter\tNNP\tB-NP\tB-PER\r\nBlackburn NNP  I-NP   I-PER\r\n-DOCSTART- -X- -X- O\r\n"
            "BRUSSELS NNP B-NP B-LOC")
    rows = read_conll(write(tmp_path / "a.txt", text))
    assert [r["tokens"] for r in rows] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [r["tags"] for r in rows] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert rows[1]["__lines__"] == [9, 10] and rows[2]["__line__"] == 12
    # another column holds the tag
    chunks = read_conll(tmp_path / "a.txt", tag_column=2)
    assert chunks[0]["tags"] == ["B-NP", "B-VP", "B-NP"]
    # a no-break space belongs to the token, it does not separate columns
    assert read_conll(write(tmp_path / "b.conll", "10\u00a0000 O\n"))[0]["tokens"] == ["10\u00a0000"]
    # tokens only: an unlabelled file (kept for prediction)
    assert read_conll(write(tmp_path / "c.txt", "Hello\nworld\n\nAgain\n"))[0]["tags"] is None


def test_scheme_detection():
    assert detect_scheme([["B-PER", "I-PER", "O", "B-LOC"]]) == "iob2"
    assert detect_scheme([["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]]) == "iob1"
    assert detect_scheme([["B-PER", "E-PER", "O", "S-LOC"]]) == "iobes"
    assert detect_scheme([["B-PER", "L-PER", "O", "U-LOC"]]) == "bilou"
    with pytest.raises(ValueError, match="mix IOBES"):
        detect_scheme([["S-PER", "U-LOC"]])


def test_scheme_converters_round_trip():
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG", "O", "B-MISC"]
    expected = {
        "iob1": ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG", "O", "I-MISC"],
        "iobes": ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG", "O", "S-MISC"],
        "bilou": ["B-PER", "L-PER", "U-PER", "O", "U-LOC", "B-ORG", "I-ORG", "L-ORG", "O", "U-MISC"],
        "iob2": iob2,
    }
    for scheme, tags in expected.items():
        assert from_iob2(iob2, scheme) == tags, scheme
        assert to_iob2(tags, scheme) == iob2, scheme
    # many random well-formed sequences: both directions round-trip in every scheme
    rng = random.Random(0)
    for _ in range(300):
        seq: list[str] = []
        while len(seq) < 12:
            if rng.random() < 0.4:
                seq.append("O")
            else:
                kind = rng.choice(["PER", "LOC"])
                seq += [f"B-{kind}"] + [f"I-{kind}"] * rng.randint(0, 2)
        for scheme in ("iob1", "iob2", "iobes", "bilou"):
            written = from_iob2(seq, scheme)
            assert to_iob2(written, scheme) == seq
            assert from_iob2(to_iob2(written, scheme), scheme) == written
    # a prediction that opens an entity with I-: written as predicted in IOB2, read as a start elsewhere
    assert from_iob2(["O", "I-PER", "I-PER"], "iob2") == ["O", "I-PER", "I-PER"]
    assert from_iob2(["O", "I-PER", "I-PER"], "iobes") == ["O", "B-PER", "E-PER"]
    assert normalize_iob2(["I-LOC", "B-PER", "I-LOC"]) == ["B-LOC", "B-PER", "B-LOC"]


def test_label_set_has_inside_beside_every_begin():
    assert iob2_label_set(["O", "B-PER", "B-LOC", "I-LOC"]) == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    assert iob2_label_set(["S-PER", "O"]) == ["O", "B-PER", "I-PER"]


# -- alignment ---------------------------------------------------------------------------------------
def test_first_subtoken_carries_the_label(tokenizer):
    words = ["Schwarzenegger", "visited", "Kuala", "Lumpur"]
    labels = [[1, 0, 2, 3]]  # B-PER O B-LOC I-LOC (ids)
    enc = encode_words(tokenizer, [words], labels, max_length=64, stride=8)
    ids = enc.input_ids[0].tolist()
    toks = tokenizer.convert_ids_to_tokens(ids)
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
    assert toks[1:5] == ["schwarz", "##ene", "##gger", "visited"]
    lab = enc.labels[0].tolist()
    assert lab[:5] == [IGNORE, 1, IGNORE, IGNORE, 0] and lab[-1] == IGNORE
    # the word predicted at each position: only first sub-tokens, each word once
    wi = enc.word_index[0].tolist()
    assert [w for w in wi if w >= 0] == [0, 1, 2, 3]
    assert wi[1:5] == [0, -1, -1, 1]
    # every sub-token labelled: B- becomes I- after the first
    enc2 = encode_words(tokenizer, [words], labels, 64, 8, label_all_subtokens=True, inside_of={1: 4, 2: 3})
    assert enc2.labels[0].tolist()[1:5] == [1, 4, 4, 0]


def test_words_that_become_nothing_still_get_a_prediction(tokenizer):
    words = ["A", "\u200b", "bell", "\x07", "rang"]
    enc = encode_words(tokenizer, [words], [[0, 1, 0, 1, 0]], max_length=32, stride=4)
    assert enc.unknown_words == 2
    assert sorted(w for w in enc.word_index[0].tolist() if w >= 0) == [0, 1, 2, 3, 4]
    toks = tokenizer.convert_ids_to_tokens(enc.input_ids[0].tolist())
    assert toks.count(tokenizer.unk_token) == 2


def test_windows_predict_each_word_once_from_its_best_window(tokenizer):
    rng = random.Random(1)
    vocab = ["the", "Schwarzenegger", "of", "Kuala", "internationalisation", "a", "Lumpur", "bank", ","]
    sentences = [[rng.choice(vocab) for _ in range(rng.randint(1, 40))] for _ in range(30)]
    labels = [[rng.randint(0, 4) for _ in s] for s in sentences]
    # a word longer than the window is kept too
    sentences.append(["x"] + ["pneumonoultramicroscopicsilicovolcanoconiosis"] * 3)
    labels.append([0, 1, 2, 3])
    max_length, stride = 12, 3
    enc = encode_words(tokenizer, sentences, labels, max_length, stride)
    assert enc.windowed_sentences > 5
    seen: dict[int, list[int]] = {}
    for ids, lab, wi, s in zip(enc.input_ids, enc.labels, enc.word_index, enc.sentence):
        assert len(ids) <= max_length
        for pos, w in enumerate(wi.tolist()):
            if w >= 0:
                seen.setdefault(s, []).append(w)
                assert lab[pos] == labels[s][w]  # the owned position carries the word's label
    for s, words in enumerate(sentences):
        assert sorted(seen[s]) == list(range(len(words))), s  # every word exactly once
    # the owner is the window where the first sub-token has the most context on its shorter side
    starts = window_starts(25, 10, 3)
    assert starts == [0, 7, 14, 21]
    assert owners([8, 9, 13], starts, 10, 25) == {8: 0, 9: 1, 13: 1}


def test_stride_must_fit_in_the_window(tokenizer):
    with pytest.raises(ValueError, match="stride=10 must be"):
        encode_words(tokenizer, [["a"]], None, max_length=12, stride=10)
    assert special_template(tokenizer).size == 2


# -- metrics -----------------------------------------------------------------------------------------
Y_TRUE = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-MISC"], ["B-LOC", "O"],
          ["O", "O", "B-PER"]]
Y_PRED = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "I-ORG", "I-ORG", "O", "O"], ["B-LOC", "I-LOC"],
          ["O", "B-PER", "I-PER"]]
NAMES = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]


@pytest.mark.parametrize("mode", ["default", "strict"])
def test_entity_metric_equals_seqeval(mode):
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    kw = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    metric = EntityScores(NAMES, mode)
    index = {n: i for i, n in enumerate(NAMES)}
    # words fed out of order, in two batches, with one sentence repeated (a distributed sampler's padding)
    items = [(s, w, index[Y_TRUE[s][w]], index[Y_PRED[s][w]]) for s in range(len(Y_TRUE)) for w in range(len(Y_TRUE[s]))]
    random.Random(0).shuffle(items)
    items += [x for x in items if x[0] == 2]
    for part in (items[:9], items[9:]):
        metric.update(*(torch.tensor([x[k] for x in part]) for k in range(4)))
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got["f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, **kw), abs=1e-6)
    assert got["precision"] == pytest.approx(precision_score(Y_TRUE, Y_PRED, **kw), abs=1e-6)
    assert got["recall"] == pytest.approx(recall_score(Y_TRUE, Y_PRED, **kw), abs=1e-6)
    assert got["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED), abs=1e-6)
    report = classification_report(Y_TRUE, Y_PRED, output_dict=True, zero_division=0, **kw)
    for kind in ("LOC", "MISC", "ORG", "PER"):
        assert got[f"f1_{kind}"] == pytest.approx(report.get(kind, {}).get("f1-score", 0.0), abs=1e-6)
    assert sorted(metric.last) == [0, 1, 2, 3]
    assert metric.last[2][0].tolist() == [0, 1]


def test_default_and_strict_modes_differ_on_an_entity_opened_by_inside():
    default = seqeval_scores([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]], ["PER"], "default")
    strict = seqeval_scores([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]], ["PER"], "strict")
    assert default["f1"] == 1.0 and strict["f1"] == 0.0


def test_simple_entities_group_like_the_pipeline():
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC"}
    text = "Ada Lovelace in Paris"
    offsets = [(0, 0), (0, 3), (4, 8), (8, 12), (13, 15), (16, 21), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 1]
    big = 8.0
    logits = np.zeros((7, 4), dtype=np.float32)
    for row, label in zip(range(1, 6), [1, 2, 2, 0, 3]):
        logits[row, label] = big
    ents = simple_entities(logits, offsets, special, text, id2label)
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in ents] == [("PER", "Ada Lovelace", 0, 12),
                                                                           ("LOC", "Paris", 16, 21)]
    # B- after B- of the same type starts a new entity
    logits[2] = 0
    logits[2, 1] = big
    assert [e["text"] for e in simple_entities(logits, offsets, special, text, id2label)] == ["Ada", "Lovelace", "Paris"]


def test_batched_entities_match_one_text_at_a_time():
    # predict() takes the softmax and best label of a whole padded batch at once; each text's entities must be
    # those of its own rows alone (labels without a prefix, B-/I- runs, NaN rows, special tokens)
    rng = np.random.default_rng(0)
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "MISC"}
    lengths = [9, 4, 1, 12]
    logits = (rng.normal(size=(len(lengths), max(lengths), 6)) * 3).astype(np.float32)
    logits[0, 3] = np.nan
    best, score = best_labels(logits)
    text = "abcdefghij" * 5
    n_entities = 0
    for j, n in enumerate(lengths):
        offsets = np.stack([np.arange(n) * 3, np.arange(n) * 3 + 2], axis=1)
        special = np.zeros(n, dtype=np.int64)
        special[0] = 1
        one = simple_entities(logits[j, :n], offsets, special, text, id2label)
        batched = grouped_entities(best[j, :n], score[j, :n], offsets, special, text, id2label)
        assert [(e["type"], e["start"], e["end"], e["text"]) for e in one] == \
               [(e["type"], e["start"], e["end"], e["text"]) for e in batched]
        assert all(a["score"] == pytest.approx(b["score"], abs=1e-6, nan_ok=True) for a, b in zip(one, batched))
        n_entities += len(one)
    assert n_entities > 3


def test_loss_over_labelled_subtokens_and_zero_for_none():
    from types import SimpleNamespace

    from lmforge.tasks.token_classification.module import TokenClassificationModule

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE, 0], [3, IGNORE, IGNORE, IGNORE, IGNORE]])
    got = TokenClassificationModule.loss(None, SimpleNamespace(logits=logits), {"labels": labels})
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    assert torch.allclose(got, want, atol=1e-7)
    # a window of continuation sub-tokens only: loss 0 (not NaN), and backward still runs
    none = TokenClassificationModule.loss(None, SimpleNamespace(logits=logits), {"labels": torch.full_like(labels, IGNORE)})
    none.backward()
    assert float(none) == 0.0 and logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


# -- bad input, through the datamodule ---------------------------------------------------------------
@pytest.fixture
def dm_factory(tmp_path, cache_dir):
    from lmforge.tasks.token_classification.data import TokenClassificationDataModule
    from lmforge.utils.resolvers import minilm_path

    def make(train: Path, **kw):
        dm = TokenClassificationDataModule(train_file=str(train), source="local", tokenizer=minilm_path(),
                                           cache_dir=str(tmp_path / "cache"), validation_fraction=0.0, **kw)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    return make


def test_too_few_columns_names_file_and_line(tmp_path, dm_factory):
    f = write(tmp_path / "t.txt", "EU NNP B-ORG\nrejects\n")
    with pytest.raises(DataError, match=r"t\.txt:2: 1 column \('rejects'\); data.tag_column=-1 needs at least 2"):
        dm_factory(f)
    f = write(tmp_path / "u.txt", "EU NNP B-NP B-ORG\nrejects VBZ\n")
    with pytest.raises(DataError, match=r"u\.txt:2: 2 columns \('rejects VBZ'\); data.tag_column=3 needs at least 4"):
        dm_factory(f, tag_column=3)


@pytest.mark.parametrize("tag", ["B_PER", "X-LOC", "PER"])
def test_malformed_tag_names_file_line_and_what_was_expected(tmp_path, dm_factory, tag):
    f = write(tmp_path / "t.conll", f"EU B-ORG\n\nPeter {tag}\n")
    with pytest.raises(DataError, match=rf"t\.conll:3: malformed tag '{tag}'; expected O, or a prefix B-/I-"):
        dm_factory(f)


def test_strict_iob2_rejects_an_entity_opened_by_inside(tmp_path, dm_factory):
    f = write(tmp_path / "t.bio", "EU B-ORG\nsaid O\nPeter I-PER\n")
    with pytest.raises(DataError, match=r"t\.bio:3: tag 'I-PER' opens an entity after O; strict IOB2 .* expects B-PER"):
        dm_factory(f, tag_scheme="iob2")
    dm = dm_factory(f)  # auto: read as IOB1
    assert dm.meta["scheme"] == "iob1"


def test_jsonl_errors(tmp_path, dm_factory):
    f = write(tmp_path / "t.jsonl", json.dumps({"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}) + "\n"
              + json.dumps({"tokens": ["Peter", "Blackburn"], "ner_tags": []}) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:2: 2 tokens but an empty tags list in column 'ner_tags'"):
        dm_factory(f)
    f = write(tmp_path / "u.jsonl", json.dumps({"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}) + "\n"
              + json.dumps({"tokens": ["Peter", "Blackburn", "."], "tags": ["B-PER", "I-PER"]}) + "\n")
    with pytest.raises(DataError, match=r"u\.jsonl:2: 3 tokens \(column 'tokens'\) but 2 tags \(column 'tags'\)"):
        dm_factory(f)


def test_non_utf8_names_file_and_line(tmp_path, dm_factory):
    f = write(tmp_path / "t.txt", b"EU B-ORG\n\nM\xfcnchen B-LOC\n")
    with pytest.raises(DataError, match=r"t\.txt:3: not valid UTF-8 \(byte 0xfc"):
        dm_factory(f)


def test_tag_outside_label_names(tmp_path, dm_factory):
    f = write(tmp_path / "t.txt", "EU B-ORG\nsaid O\n\nPeter B-PER\n")
    with pytest.raises(DataError, match=r"t\.txt:4: tag 'B-PER' \(as IOB2: B-PER\) is not in data.label_names"):
        dm_factory(f, label_names=["O", "B-ORG", "I-ORG"])


def test_jsonl_integer_tags_with_label_names(tmp_path, dm_factory):
    rows = [{"words": ["EU", "rejects", "German", "call"], "labels": [3, 0, 7, 0]},
            {"words": ["Peter", "Blackburn"], "labels": [1, 2]}]
    f = write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    dm = dm_factory(f, label_names=names)
    assert dm.label_names == names  # given names keep their order (eval.py passes the checkpoint's)
    assert dm.datasets["train"][0]["labels"].tolist()[1:5] == [3, 0, 7, 0]
    with pytest.raises(DataError, match=r"t\.jsonl:1 \(token 1\): integer tag 3 in column 'labels' needs the tag names"):
        dm_factory(f)


def test_iobes_input_is_learned_as_iob2(tmp_path, dm_factory):
    f = write(tmp_path / "t.iobes", "Peter B-PER\nBlackburn E-PER\nin O\nBonn S-LOC\n")
    dm = dm_factory(f)
    assert dm.meta["scheme"] == "iobes"
    assert dm.label_names == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]


def test_bad_settings(tmp_path, dm_factory):
    f = write(tmp_path / "t.txt", "EU B-ORG\n")
    with pytest.raises(ConfigError, match="data.stride=200"):
        dm_factory(f, stride=200)
    with pytest.raises(ConfigError, match="data.tag_column=0"):
        dm_factory(f, tag_column=0)
    with pytest.raises(DataError, match="cannot tell the format from the extension '.csv'"):
        dm_factory(write(tmp_path / "t.csv", "a,b\n"))


def test_hub_dataset_with_class_label_tags(tmp_path, cache_dir):
    """A dataset whose tag column is a sequence of class labels: the names come from its features (a local
    folder of parquet files stands for a hub dataset, which needs the network)."""
    import datasets

    from lmforge.tasks.token_classification.data import TokenClassificationDataModule
    from lmforge.utils.resolvers import minilm_path

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                               "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    rows = {"tokens": [["Peter", "Blackburn", "visited", "Paris"], ["Bonn", "is", "quiet"]] * 5,
            "ner_tags": [[1, 2, 0, 3], [3, 0, 0]] * 5}
    (tmp_path / "ds" / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_dict(rows, features=feats)
    ds.to_parquet(str(tmp_path / "ds" / "data" / "train-00000.parquet"))
    ds.to_parquet(str(tmp_path / "ds" / "data" / "validation-00000.parquet"))
    dm = TokenClassificationDataModule(source="hub", hub_name=str(tmp_path / "ds"), tokenizer=minilm_path(),
                                       cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.label_names == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    index = {n: i for i, n in enumerate(dm.label_names)}
    first = dm.datasets["validation"][0]
    assert [int(x) for x in first["labels"] if x != IGNORE] == [index[t] for t in ("B-PER", "I-PER", "O", "B-LOC")]
    assert dm.datasets["validation"].gold_tags(0) == ["B-PER", "I-PER", "O", "B-LOC"]
