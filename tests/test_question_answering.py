"""Extractive question answering (task=question_answering): windows, post-processing, SQuAD EM/F1, readers and
their errors, and one tiny trained run shared by the end-to-end checks (official files, eval.py, the predictor).

The slow part (real SQuAD data, two processes) is in test_question_answering_real.py.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from lmforge.data.squad import read_qa_file
from lmforge.tasks.question_answering.features import encode_windows
from lmforge.tasks.question_answering.metrics import SquadScores, normalize_answer, score_question
from lmforge.tasks.question_answering.postprocess import answers_from_logits
from lmforge.utils.errors import DataError

# --------------------------------------------------------------------------------------------------------------
# an independent implementation of the official evaluate-v1.1.py / evaluate-v2.0.py rules, written apart from
# lmforge's: regular expressions for punctuation, counting by hand


def _official_normalize(s: str) -> str:
    s = s.lower()
    s = re.sub("[" + re.escape(string.punctuation) + "]", "", s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def _official_f1(pred: str, gold: str, v2: bool) -> float:
    p, g = _official_normalize(pred).split(), _official_normalize(gold).split()
    if v2 and (len(p) == 0 or len(g) == 0):
        return float(p == g)
    counts = {}
    for t in g:
        counts[t] = counts.get(t, 0) + 1
    same = 0
    for t in p:
        if counts.get(t, 0) > 0:
            counts[t] -= 1
            same += 1
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return (2 * precision * recall) / (precision + recall)


def official_scores(dataset: dict, predictions: dict, v2: bool = False) -> dict:
    """What evaluate-v1.1.py (v2=False) or evaluate-v2.0.py's exact/f1 print for a SQuAD dataset object."""
    em = f1 = total = 0.0
    for article in dataset["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                total += 1
                golds = [a["text"] for a in qa.get("answers", [])]
                if v2:
                    golds = [g for g in golds if _official_normalize(g)] or [""]
                pred = predictions.get(qa["id"], None)
                if pred is None:
                    continue
                em += max(float(_official_normalize(pred) == _official_normalize(g)) for g in golds)
                f1 += max(_official_f1(pred, g, v2) for g in golds)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


PAIRS = [  # (prediction, gold answers)
    ("Denver Broncos", ["Denver Broncos", "The Denver Broncos"]),
    ("the  Denver   broncos!", ["Denver Broncos"]),
    ("Broncos", ["Denver Broncos"]),
    ("a cat and an apple", ["the cat, the apple"]),
    ("Santa Clara, California", ["Levi's Stadium", "Santa Clara"]),
    ("1,000", ["1000"]),
    ("", ["something"]),
    ("Théâtre du Châtelet", ["théâtre du châtelet"]),
    ("the the the", ["the"]),
    ("an", ["An apple"]),
    ("New York New York", ["New York"]),
    ("answer–dash", ["answer dash"]),
]


@pytest.mark.parametrize("pred,golds", PAIRS)
def test_metric_equals_an_independent_implementation_of_the_official_rules(pred, golds):
    for v2 in (False, True):
        em, f1 = score_question(pred, golds, v2=v2)
        want_em = max(float(_official_normalize(pred) == _official_normalize(g)) for g in golds)
        gv = ([g for g in golds if _official_normalize(g)] or [""]) if v2 else golds
        want_f1 = max(_official_f1(pred, g, v2) for g in gv)
        assert (em, pytest.approx(f1)) == (want_em, want_f1)


def test_normalisation_follows_the_official_order():
    assert normalize_answer("  The Quick,  brown FOX. ") == "quick brown fox"
    assert normalize_answer("theatre an-apple") == "theatre anapple"  # punctuation goes before articles
    assert score_question("", [""], v2=True) == (1.0, 1.0)  # v2.0: no answer for an unanswerable question
    assert score_question("Paris", [""], v2=True) == (0.0, 0.0)


def test_scores_average_over_questions_once_each():
    m = SquadScores(v2=True)
    # question 3 is seen twice (as DistributedSampler repeats it to even out ranks): counted once
    m.update(torch.tensor([0, 1, 3]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 0.5, 1.0]),
             torch.tensor([True, True, False]))
    m.update(torch.tensor([3, 2]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([False, True]))
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["exact_match"] == pytest.approx(50.0) and out["f1"] == pytest.approx(62.5)
    assert out["has_ans_exact_match"] == pytest.approx(100 / 3) and out["has_ans_f1"] == pytest.approx(50.0)
    assert out["no_ans_exact_match"] == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------------------------
# windows


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lmforge.utils.resolvers import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def _answer_tokens(w, i, context):
    s, e = w.start_positions[i], w.end_positions[i]
    if s == w.cls_index[i]:
        return None
    return context[w.char_start[i][s]: w.char_end[i][e]]


@pytest.mark.parametrize("answer,where", [("Ærøskøbing", "start"), ("crème brûlée", "middle"),
                                          ("every morning.", "end"), ("Café Ønsket", "non-ASCII")])
def test_an_answer_maps_to_its_tokens_and_back(tokenizer, answer, where):
    context = "Ærøskøbing is a small town in Denmark. Its Café Ønsket serves crème brûlée every morning."
    start = context.index(answer)
    w = encode_windows(tokenizer, ["What is served?"], [context], 64, 16, [(start, start + len(answer))])
    assert len(w.input_ids) == 1 and w.answer_kept == [True]
    assert _answer_tokens(w, 0, context) == answer
    # offsets cover the passage only: question and special tokens are -1
    ids = list(w.input_ids[0])
    sep = ids.index(tokenizer.sep_token_id)
    assert (w.char_start[0][: sep + 1] == -1).all() and w.char_start[0][-1] == -1
    assert (w.char_start[0][sep + 1: -1] >= 0).all()


def _long_context():
    return " ".join(f"w{chr(97 + i % 26)}{chr(97 + (i * 7) % 26)}" for i in range(80))


def test_windows_overlap_and_cover_the_passage(tokenizer):
    context = _long_context()
    w = encode_windows(tokenizer, ["Which word?"], [context], 32, 8, [None])
    assert len(w.input_ids) > 3 and all(len(x) <= 32 for x in w.input_ids)
    spans = [(int(s[s >= 0][0]), int(e[e >= 0][-1])) for s, e in zip(w.char_start, w.char_end)]
    assert spans[0][0] == 0 and spans[-1][1] == len(context)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s1 < e0  # consecutive windows share passage tokens (doc_stride)
    # no answer: every window points at CLS
    assert w.start_positions == w.end_positions == w.cls_index == [0] * len(w.input_ids)


def test_an_answer_across_a_window_boundary_is_found_in_the_next_window(tokenizer):
    context = _long_context()
    probe = encode_windows(tokenizer, ["Which word?"], [context], 32, 8, [None])
    end0 = int(probe.char_end[0][probe.char_end[0] >= 0][-1])  # the first window stops inside this region
    start = context.rfind(" ", 0, end0 - 1) + 1  # a two-word answer starting before the cut, ending after it
    stop = context.index(" ", context.index(" ", end0) + 1) if context[end0:end0 + 1] != " " else context.index(" ", end0 + 1)
    answer = context[start:stop]
    assert start < end0 < stop, (answer, end0)
    w = encode_windows(tokenizer, ["Which word?"], [context], 32, 8, [(start, stop)])
    assert _answer_tokens(w, 0, context) is None  # cut by the first window: CLS
    assert _answer_tokens(w, 1, context) == answer
    assert w.answer_kept == [True]


def test_an_answer_at_the_very_end_of_a_long_passage(tokenizer):
    context = _long_context()
    answer = context.split()[-1]
    start = len(context) - len(answer)
    w = encode_windows(tokenizer, ["Which word?"], [context], 32, 8, [(start, len(context))])
    found = [i for i in range(len(w.input_ids)) if _answer_tokens(w, i, context)]
    assert found and found[-1] == len(w.input_ids) - 1 and _answer_tokens(w, found[-1], context) == answer


def test_an_answer_longer_than_any_window_is_counted_as_cut(tokenizer):
    context = _long_context()
    w = encode_windows(tokenizer, ["Which word?"], [context], 32, 8, [(0, 200)])
    assert w.answer_kept == [False] and set(w.start_positions) == {0}


def test_a_question_that_leaves_no_room_for_the_passage_is_an_error(tokenizer):
    with pytest.raises(DataError, match=r"q7: the question is \d+ tokens long; with data.max_length=16"):
        encode_windows(tokenizer, ["why " * 12], ["a passage"], 16, 4, None, ["q7"])


# --------------------------------------------------------------------------------------------------------------
# post-processing from fixed logits


def _logits(n, **peaks):
    x = torch.zeros(n)
    for i, v in peaks.items():
        x[int(i[1:])] = v
    return x


def test_post_processing_picks_the_best_valid_span():
    context = "Mara Quell designed the bridge in 1871."
    # tokens: 0 CLS, 1-2 question, 3 SEP, 4.. passage words, last SEP
    starts = [-1, -1, -1, -1, 0, 5, 11, 20, 24, 31, 34, -1]
    ends = [-1, -1, -1, -1, 4, 10, 19, 23, 30, 33, 38, -1]
    s = _logits(12, t1=9.0, t4=5.0, t10=4.0)  # the question token scores best but is never an answer
    e = _logits(12, t2=9.0, t5=5.0, t3=1.0, t10=4.5)
    out = answers_from_logits(s[None], e[None], torch.tensor([starts]), torch.tensor([ends]), torch.tensor([0]), [0],
                              [context], n_best=5, max_answer_length=30)
    assert out[0]["answer"] == "Mara Quell" and (out[0]["start"], out[0]["end"]) == (0, 10)
    assert [c["text"] for c in out[0]["nbest"][:3]] == ["Mara Quell", context[:-1], "1871"]  # 10.0, 9.5, 8.5
    assert abs(sum(c["probability"] for c in out[0]["nbest"]) - 1) < 1e-6
    # too long for max_answer_length=2 tokens: a start at 4 with its end at 10 is not allowed
    s2 = _logits(12, t4=9.0)  # (4, 10) would score 18.0 but is 7 tokens long; (4, 5): 9.5 beats (10, 10): 9.0
    e2 = _logits(12, t10=9.0, t5=0.5)
    out = answers_from_logits(s2[None], e2[None], torch.tensor([starts]), torch.tensor([ends]), torch.tensor([0]), [0],
                              [context], n_best=5, max_answer_length=2)
    assert out[0]["answer"] == "Mara Quell"
    # an end before its start is never paired
    s3 = _logits(12, t10=9.0)
    e3 = _logits(12, t4=9.0, t10=1.0)
    out = answers_from_logits(s3[None], e3[None], torch.tensor([starts]), torch.tensor([ends]), torch.tensor([0]), [0],
                              [context], n_best=5, max_answer_length=30)
    assert out[0]["answer"] == "1871"


def test_post_processing_chooses_among_the_windows_of_a_question_and_keeps_case_and_spaces():
    context = "The  Old Mill stands here. Later text:  Grey   Tower!"
    tok = [(0, 3), (5, 8), (9, 13), (14, 20), (21, 25), (27, 32), (33, 37), (40, 44), (47, 52)]
    starts = torch.full((3, 8), -1)
    ends = torch.full((3, 8), -1)
    for w, span in enumerate([range(0, 5), range(4, 9), range(0, 0)]):  # windows of 5 passage tokens, 1 shared
        for j, t in enumerate(span):
            starts[w, 2 + j], ends[w, 2 + j] = tok[t]
    s = torch.zeros(3, 8)
    e = torch.zeros(3, 8)
    s[0, 3], e[0, 4] = 2.0, 2.0  # window 0: "Old Mill" (4.0)
    s[1, 2 + 3], e[1, 2 + 4] = 3.0, 3.0  # window 1: "Grey   Tower" (6.0): the better one
    out = answers_from_logits(s, e, starts, ends, torch.zeros(3, dtype=torch.long), [0, 0, 1],
                              [context, "unused"], n_best=3, max_answer_length=10)
    assert out[0]["answer"] == "Grey   Tower" and context[out[0]["start"]: out[0]["end"]] == "Grey   Tower"
    assert out[1] == {"answer": "", "start": None, "end": None, "score": 0.0, "null_odds": None, "nbest": []}


def test_a_v2_model_abstains_when_the_null_score_wins_by_the_threshold():
    context = "Mara Quell designed the bridge."
    starts = torch.tensor([[-1, -1, 0, 5, 11, -1]])
    ends = torch.tensor([[-1, -1, 4, 10, 19, -1]])
    s, e = _logits(6, t0=3.0, t2=2.0), _logits(6, t0=3.0, t3=2.0)
    kw = dict(char_start=starts, char_end=ends, cls_index=torch.tensor([0]), window_example=[0], contexts=[context],
              allow_null=True)
    out = answers_from_logits(s[None], e[None], null_threshold=0.0, **kw)[0]
    assert out["answer"] == "" and out["start"] is None and out["null_odds"] == pytest.approx(2.0)
    out = answers_from_logits(s[None], e[None], null_threshold=2.5, **kw)[0]
    assert out["answer"] == "Mara Quell"


# --------------------------------------------------------------------------------------------------------------
# readers and their errors


def _squad(qas, context="Mara Quell designed the bridge in 1871.", version="1.1", title="Bridges"):
    return {"version": version, "data": [{"title": title, "paragraphs": [{"context": context, "qas": qas}]}]}


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
    return path


def test_squad_v1_v2_and_flat_rows_read_the_same(tmp_path):
    v1 = _write(tmp_path / "v1.json", _squad([{"id": "q1", "question": "Who designed it?",
                                                 "answers": [{"text": "Mara Quell", "answer_start": 0}]}]))
    v2 = _write(tmp_path / "v2.json", _squad([
        {"id": "q1", "question": "Who designed it?", "answers": [{"text": "Mara Quell", "answer_start": 0}],
         "is_impossible": False},
        {"id": "q2", "question": "Who paid?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Mara Quell", "answer_start": 0}]}], version="v2.0"))
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"id": "q1", "question": "Who designed it?", "context": "Mara Quell designed it.",
                                "answers": {"text": ["Mara Quell"], "answer_start": [0]}}) + "\n")
    csv = tmp_path / "flat.csv"
    csv.write_text('id,question,context,answers\nq1,Who?,"Mara Quell designed it.","{""text"": [""Mara Quell""], '
                   '""answer_start"": [0]}"\n')
    a = read_qa_file(v1)[0]
    assert (a["id"], a["answers"], a["is_impossible"], a["v2"], a["title"]) == \
        ("q1", {"text": ["Mara Quell"], "answer_start": [0]}, False, False, "Bridges")
    b = read_qa_file(v2)
    assert [r["is_impossible"] for r in b] == [False, True] and all(r["v2"] for r in b)
    for f in (flat, csv):
        r = read_qa_file(f)[0]
        assert r["answers"] == {"text": ["Mara Quell"], "answer_start": [0]} and r["labelled"]
    # a .json holding flat records (not SQuAD): read as a table
    records = _write(tmp_path / "records.json", [{"question": "Who?", "context": "Mara Quell did."}])
    r = read_qa_file(records)[0]
    assert not r["labelled"] and r["question"] == "Who?"


def test_the_sample_validation_split_in_squad_json_reads_as_its_flat_rows():
    """samples/almanac/validation-v1.1.json (for eval.py file=...) holds the validation.jsonl questions in the
    official SQuAD layout: the same ids, passages and answers, in the same order."""
    folder = Path(__file__).parents[1] / "src/lmforge/samples/almanac"
    flat, squad = read_qa_file(folder / "validation.jsonl"), read_qa_file(folder / "validation-v1.1.json")
    assert json.loads((folder / "validation-v1.1.json").read_text())["version"] == "1.1" and len(squad) == 203
    for a, b in zip(flat, squad, strict=True):
        assert (a["id"], a["title"], a["question"], a["context"], a["answers"]) == \
            (b["id"], b["title"], b["question"], b["context"], b["answers"])
    assert not any(r["v2"] for r in squad)


@pytest.mark.parametrize("case,message", [
    ("misaligned", r"bad.json: question q9 \(data\[0\].paragraphs\[0\].qas\[0\]\): the answer is not in the passage "
                   r"at answer_start=5: expected 'Mara Quell', found 'Quell desi' there"),
    ("no_question", r"bad.json: question q9 \(data\[0\].paragraphs\[0\].qas\[0\]\) has no 'question' key"),
    ("no_context", r"bad.json: data\[0\].paragraphs\[0\] has no 'context' key"),
    ("empty_passage", r"bad.json: data\[0\].paragraphs\[0\]: empty passage"),
    ("flat_no_context", r"bad.jsonl: neither SQuAD JSON .* nor a table with the columns 'question' and 'context' "
                        r"\('context' missing; its columns are: id, question, answers\)"),
    ("flat_row_no_question", r"bad.jsonl:2: no 'question' key in this row"),
    ("flat_empty_passage", r"bad.jsonl:1: empty passage"),
    ("neither", r"bad.json: neither SQuAD JSON .* nor a table with the columns 'question' and 'context'"),
])
def test_bad_input_says_where_and_what(tmp_path, case, message):
    ans = [{"text": "Mara Quell", "answer_start": 0}]
    if case == "misaligned":
        f = _write(tmp_path / "bad.json", _squad([{"id": "q9", "question": "Who?", "answers":
                                                   [{"text": "Mara Quell", "answer_start": 5}]}]))
    elif case == "no_question":
        f = _write(tmp_path / "bad.json", _squad([{"id": "q9", "answers": ans}]))
    elif case == "no_context":
        f = _write(tmp_path / "bad.json", {"data": [{"title": "T", "paragraphs": [{"qas": []}]}]})
    elif case == "empty_passage":
        f = _write(tmp_path / "bad.json", _squad([{"id": "q9", "question": "Who?", "answers": []}], context="  "))
    elif case == "flat_no_context":
        f = _write(tmp_path / "bad.jsonl", json.dumps({"id": "1", "question": "Who?", "answers": []}) + "\n")
    elif case == "flat_row_no_question":
        f = _write(tmp_path / "bad.jsonl", json.dumps({"question": "Who?", "context": "Mara."}) + "\n"
                   + json.dumps({"context": "Mara."}) + "\n")
    elif case == "flat_empty_passage":
        f = _write(tmp_path / "bad.jsonl", json.dumps({"question": "Who?", "context": ""}) + "\n")
    else:
        f = _write(tmp_path / "bad.json", {"rows": [{"text": "a", "label": 1}]})
    with pytest.raises(DataError, match=message):
        read_qa_file(f)


def test_a_v1_training_question_without_answers_is_an_error(make_cfg, tmp_path):
    from lmforge.train import build_datamodule

    f = _write(tmp_path / "train.json", _squad([
        {"id": "q1", "question": "Who designed it?", "answers": [{"text": "Mara Quell", "answer_start": 0}]},
        {"id": "q2", "question": "When?", "answers": []}]))
    dm = build_datamodule(make_cfg(["task=question_answering", "data=local", f"data.train_file={f}",
                                    f"data.validation_file={f}"]))
    with pytest.raises(DataError, match=r"train.json: question q2 \(data\[0\].paragraphs\[0\].qas\[1\]\) has no "
                                        r"answers; every question of a SQuAD v1.1 training file needs at least one"):
        dm.prepare_data()


def test_questions_whose_answer_was_cut_away_are_counted_and_reported(make_cfg, tmp_path, capsys):
    """An answer longer than a window's passage part fits in no window: its windows all point at CLS; the
    DataModule counts such questions per split (answers_cut) and says so when it sets up."""
    from lmforge.train import build_datamodule

    long_answer = " ".join(f"w{chr(97 + i % 26)}{chr(98 + i % 24)}" for i in range(60))
    context = f"Mara Quell wrote the list {long_answer} in 1871."
    qas = [{"id": "short", "question": "Who wrote it?", "answers": [{"text": "Mara Quell", "answer_start": 0}]},
           {"id": "long", "question": "What is the list?",
            "answers": [{"text": long_answer, "answer_start": context.index(long_answer)}]}]
    f = _write(tmp_path / "cut.json", _squad(qas, context=context))
    dm = build_datamodule(make_cfg(["task=question_answering", "data=local", f"data.train_file={f}",
                                    f"data.validation_file={f}", "data.max_length=32", "data.doc_stride=8"]))
    dm.prepare_data()
    dm.setup("fit")
    cut = dm.answers_cut()
    assert cut["train"] == {"questions": 2, "cut": 1, "ids": ["long"]} and cut["validation"]["cut"] == 1
    out = capsys.readouterr().out
    assert ("train: 1 of 2 questions have their answer whole in no window (data.max_length=32, data.doc_stride=8); "
            "they train towards CLS") in out
    assert "validation: 1 of 2 questions have their answer whole in no window" in out and "still scored" in out


def test_a_carved_validation_split_takes_whole_articles(make_cfg, tmp_path):
    from lmforge.train import build_datamodule

    data = []
    for a in range(10):
        paras = []
        for p in range(2):
            context = f"Article {a} paragraph {p}: Mara Quell designed bridge number {a}{p}."
            paras.append({"context": context, "qas": [
                {"id": f"{a}-{p}-{k}", "question": f"Who designed bridge {a}{p}? ({k})",
                 "answers": [{"text": "Mara Quell", "answer_start": context.index("Mara")}]} for k in range(3)]})
        data.append({"title": f"Article {a}", "paragraphs": paras})
    f = _write(tmp_path / "train.json", {"version": "1.1", "data": data})
    dm = build_datamodule(make_cfg(["task=question_answering", "data=local", f"data.train_file={f}",
                                    "data.validation_fraction=0.2", "data.max_length=64", "data.doc_stride=16"]))
    raw = dm.read_splits()
    train_titles = {r["title"] for r in raw["train"].rows}
    val_titles = {r["title"] for r in raw["validation"].rows}
    assert len(val_titles) == 2 and not train_titles & val_titles and len(raw["validation"].rows) == 12
    # named articles (the experiment=squad recipe)
    dm = build_datamodule(make_cfg(["task=question_answering", "data=local", f"data.train_file={f}",
                                    "data.validation_articles=[Article 3]", "data.test_articles=[Article 5,Article 6]"]))
    raw = dm.read_splits()
    assert {r["title"] for r in raw["validation"].rows} == {"Article 3"}
    assert {r["title"] for r in raw["test"].rows} == {"Article 5", "Article 6"}
    assert len(raw["train"].rows) == 42
    dm = build_datamodule(make_cfg(["task=question_answering", "data=local", f"data.train_file={f}",
                                    "data.validation_articles=[Atlantis]"]))
    with pytest.raises(DataError, match=r"data.validation_articles: \['Atlantis'\] are not article titles of"):
        dm.read_splits()


def test_text_classification_keys_are_refused_with_the_question_answering_names(make_cfg):
    from lmforge.train import build_datamodule
    from lmforge.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="data.text_column=question: question answering has no such column; use "
                                          "data.question_column"):
        build_datamodule(make_cfg(["task=question_answering", "data=local", "data.train_file=x.json",
                                   "data.text_column=question"]))


# --------------------------------------------------------------------------------------------------------------
# one tiny trained run (small windows), shared


LONG_PASSAGE = ("Velmora is a river town in the province of Ostrand. " + " ".join(
    f"In {1700 + 7 * i}, the town built its {i + 1}th bridge over the river Tessa." for i in range(14))
    + " The present mayor, Ilse Marrow, was elected in 2019.")
# small windows and few evaluation questions: the fast tests share one token cache entry
SMALL_DATA = ["data.max_length=96", "data.doc_stride=32", "data.batch_size=8", "data.max_eval_samples=24"]
SMALL = [*SMALL_DATA, "trainer.max_steps=6", "trainer.val_check_interval=1000", "trainer.check_val_every_n_epoch=null",
         "trainer.num_sanity_val_steps=0", "extras.print_config=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    from lmforge.train import train

    base = tmp_path_factory.mktemp("qa")
    cfg = compose_cfg(["task=question_answering", *SMALL], base / "run", cache_dir)
    metrics = train(cfg)
    return cfg, metrics, Path(cfg.paths.output_dir)


def test_fast_dev_run(make_cfg):
    from lmforge.train import train

    metrics = train(make_cfg(["task=question_answering", "debug=fdr", *SMALL_DATA, "predict.texts=null",
                              "extras.print_config=false"]))
    assert metrics["params/total"] > 0 and "val/f1" in metrics and "test/exact_match" in metrics


def test_the_run_scores_questions_and_writes_the_official_files(tiny_run):
    cfg, metrics, run = tiny_run
    for stage in ("val", "test"):
        assert 0.0 <= metrics[f"{stage}/exact_match"] <= metrics[f"{stage}/f1"] <= 100.0
        assert metrics[f"{stage}/score"] == metrics[f"{stage}/f1"]
    preds = json.loads((run / "predictions.json").read_text())
    nbest = json.loads((run / "nbest_predictions.json").read_text())
    assert len(preds) == 24 and set(preds) == set(nbest)  # one answer per test question (max_eval_samples=24)
    assert all(isinstance(v, str) for v in preds.values())
    assert all(nbest[q][0]["text"] == preds[q] for q in preds)
    assert not (run / "null_odds.json").exists()  # a v1.1 model never abstains
    # the test split's questions, scored as the official script scores predictions.json
    rows = [json.loads(line) for line in (Path(__file__).parents[1] / "src/lmforge/samples/almanac/test.jsonl")
            .read_text().splitlines()]
    dataset = {"data": [{"title": "t", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "answers": [{"text": t} for t in r["answers"]["text"]]}]}
        for r in rows if r["id"] in preds]}]}
    official = official_scores(dataset, preds)
    assert official["exact_match"] == pytest.approx(metrics["test/exact_match"], abs=0.1)
    assert official["f1"] == pytest.approx(metrics["test/f1"], abs=0.1)


def test_export_loads_in_transformers_and_the_predictor_gives_lmforges_answers(tiny_run):
    from transformers import AutoModelForQuestionAnswering

    import lmforge
    from lmforge.tasks.question_answering.predictor import QuestionAnsweringPredictor
    from lmforge.train import build_datamodule, build_module

    cfg, _, run = tiny_run
    model = AutoModelForQuestionAnswering.from_pretrained(run / "export")
    assert type(model).__name__ == "BertForQuestionAnswering"
    inputs = [*[dict(x) for x in cfg.task.examples], {"question": "Who is the mayor of Velmora?", "context": LONG_PASSAGE}]
    qa = lmforge.load(str(run / "export"))  # the top-level package, as a user serving the export calls it
    assert isinstance(qa, QuestionAnsweringPredictor)
    assert qa.settings["max_length"] == 96 and qa.settings["doc_stride"] == 32
    served = qa.predict(inputs)
    # lmforge's own predict, on the module rebuilt from the run's best checkpoint
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.encode_inputs(inputs[-1:])[0]["windows"]) >= 3  # the long passage needs several windows
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    from lmforge.checkpoints import load_checkpoint

    module.load_state_dict(load_checkpoint(json.loads((run / "metrics.json").read_text())["best_checkpoint"])["state_dict"])
    ours = module.predict(inputs, dm)
    for mine, theirs, x in zip(ours, served, inputs):
        assert (mine["answer"], mine["start"], mine["end"]) == (theirs["answer"], theirs["start"], theirs["end"])
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
        assert x["context"][mine["start"]: mine["end"]] == mine["answer"]
    one = qa(inputs[0]["question"], inputs[0]["context"])  # alone: padded differently, the same answer
    assert set(one) == {"answer", "start", "end", "score"} and one["score"] == pytest.approx(served[0]["score"], abs=1e-4)
    assert [one[k] for k in ("answer", "start", "end")] == [served[0][k] for k in ("answer", "start", "end")]


def test_the_predictor_batches_by_length_and_returns_input_order(tiny_run):
    from lmforge.tasks.question_answering.features import question_items
    from lmforge.tasks.question_answering.predictor import QuestionAnsweringPredictor, question_order

    cfg, _, run = tiny_run
    short = dict(cfg.task.examples[0])
    long_ = {"question": "Who is the mayor of Velmora?", "context": LONG_PASSAGE}
    inputs = [short, long_, {"question": "When was the 3rd bridge built?", "context": LONG_PASSAGE}, short]
    qa = QuestionAnsweringPredictor(run / "export", batch_size=2)
    items_order = question_order(question_items(qa.tokenizer, [x["question"] for x in inputs],
                                                [x["context"] for x in inputs], 96, 32))
    assert items_order[:2] == [1, 2] and sorted(items_order) == [0, 1, 2, 3]  # the long passage's questions first
    batched = qa.predict(inputs)
    alone = [qa(x) for x in inputs]  # one at a time: each in a batch of its own
    assert [(b["answer"], b["start"], b["end"]) for b in batched] == [(a["answer"], a["start"], a["end"]) for a in alone]
    assert all(b["score"] == pytest.approx(a["score"], abs=1e-4) for a, b in zip(alone, batched))
    assert batched[0] == batched[3]  # the same question twice, answered the same wherever its batch fell
    whole = QuestionAnsweringPredictor(run / "export", chunk_tokens=0).predict(inputs)
    pieces = QuestionAnsweringPredictor(run / "export", chunk_tokens=100).predict(inputs)  # a window or two a pass
    assert [(w["answer"], w["start"], w["end"]) for w in whole] == [(b["answer"], b["start"], b["end"]) for b in pieces]
    assert all(w["score"] == pytest.approx(b["score"], abs=1e-4) for w, b in zip(whole, pieces))
    bf16 = QuestionAnsweringPredictor(run / "export", batch_size=2, precision="bf16").predict(inputs)
    assert [set(x) for x in bf16] == [{"answer", "start", "end", "score"}] * 4
    assert all(x["context"][b["start"]: b["end"]] == b["answer"] for x, b in zip(inputs, bf16))
    with pytest.raises(ValueError, match="chunk_tokens=-1"):
        QuestionAnsweringPredictor(run / "export", chunk_tokens=-1)
    with pytest.raises(ValueError, match="precision='16'"):
        QuestionAnsweringPredictor(run / "export", precision="16")
    assert qa.predict([]) == []


def test_lmforge_load_is_lazy_and_refuses_folders_it_cannot_serve(tiny_run, tmp_path):
    import subprocess
    import sys

    import lmforge

    # import lmforge stays cheap: neither torch nor transformers until load() is called
    probe = subprocess.run([sys.executable, "-c", "import sys, lmforge; lmforge.load; "
                            "print('torch' in sys.modules, 'transformers' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["False", "False"]
    with pytest.raises(FileNotFoundError, match="not a model folder .no config.json.; pass a run's export/ folder"):
        lmforge.load(tmp_path)
    _, _, run = tiny_run
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["lmforge_predictor"] == "lmforge.tasks.question_answering.predictor:QuestionAnsweringPredictor"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({**config, "lmforge_predictor": None,
                                                   "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(ValueError, match=r"names no lmforge predictor \(lmforge_predictor\).*"
                                         r"\(BertForSequenceClassification\) loads with transformers"):
        lmforge.load(plain)
    (plain / "config.json").write_text(json.dumps({**config, "lmforge_predictor": "os:system"}))
    with pytest.raises(ValueError, match=r"lmforge_predictor='os:system' is not an lmforge predictor.*refusing"):
        lmforge.load(plain)


def test_the_question_answering_pipeline_of_transformers_4_gives_the_same_answer(tiny_run):
    import transformers

    try:
        from transformers.pipelines import SUPPORTED_TASKS
    except ImportError:  # pragma: no cover
        SUPPORTED_TASKS = {}
    if "question-answering" not in SUPPORTED_TASKS:
        pytest.skip(f"transformers {transformers.__version__} has no question-answering pipeline "
                    "(transformers 5 removed it); lmforge.load(<export>) serves the export instead")
    from transformers import pipeline  # pragma: no cover - only with transformers 4.x

    from lmforge import load

    cfg, _, run = tiny_run
    pipe = pipeline("question-answering", model=str(run / "export"), tokenizer=str(run / "export"), device="cpu")
    qa = load(run / "export")
    for x in [dict(x) for x in cfg.task.examples]:
        theirs = pipe(question=x["question"], context=x["context"], max_seq_len=96, doc_stride=32, max_answer_len=30)
        mine = qa(x["question"], x["context"])
        assert (theirs["answer"].strip(), theirs["start"], theirs["end"]) == (mine["answer"], mine["start"], mine["end"])


def test_eval_scores_a_squad_file_and_predicts_from_the_command_line(tiny_run, tmp_path):
    from lmforge.evaluate import evaluate

    cfg, _, run = tiny_run
    rows = [json.loads(line) for line in (Path(__file__).parents[1] / "src/lmforge/samples/almanac/validation.jsonl")
            .read_text().splitlines()][:30]
    squad = {"version": "1.1", "data": [{"title": "almanac", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                            "answers": [{"text": t, "answer_start": s} for t, s in
                                                        zip(r["answers"]["text"], r["answers"]["answer_start"])]}]}
        for r in rows]}]}
    f = _write(tmp_path / "dev.json", squad)
    asked = tmp_path / "asked.jsonl"
    asked.write_text(json.dumps({"question": "Who is the mayor of Velmora?", "context": LONG_PASSAGE}) + "\n")
    out = tmp_path / "eval"
    ecfg = compose_cfg([f"run={run}", f"file={f}", f"predict.file={asked}",
                        "predict.texts=[{question: Who designed the bridge?, context: The bridge was designed by Mara "
                        "Quell in 1871.}]"], out, tmp_path / "cache", config_name="eval")
    metrics = evaluate(ecfg)
    preds = json.loads((out / "predictions.json").read_text())
    assert set(preds) == {r["id"] for r in rows}
    official = official_scores(squad, preds)
    assert official["exact_match"] == pytest.approx(metrics["file/exact_match"], abs=0.1)
    assert official["f1"] == pytest.approx(metrics["file/f1"], abs=0.1)
    records = metrics["predictions"]
    assert [r["question"] for r in records] == ["Who designed the bridge?", "Who is the mayor of Velmora?"]
    for r in records:
        assert r["context"][r["start"]: r["end"]] == r["answer"] and 0.0 <= r["score"] <= 1.0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["answer"] for line in lines] == [r["answer"] for r in records]


def test_a_partial_validation_scores_only_the_questions_it_saw(tiny_run):
    """limit_val_batches / the sanity check: batches are whole questions, so the score is the mean over the questions
    of the batches that ran (here: one batch of 16 questions), not a mean diluted by the questions never seen."""
    import lightning as L

    from lmforge.train import build_datamodule, build_module

    cfg, _, run = tiny_run
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    loader = dm.eval_dataloader("validation")
    batch = next(iter(loader))
    assert batch["example_index"].tolist() == list(range(16))
    assert batch["input_ids"].shape[0] >= 16  # every window of those 16 questions
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, limit_val_batches=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    full = trainer.validate(module, datamodule=dm, verbose=False)[0]
    module.eval()
    with torch.no_grad():
        answers = module.answers(module(batch), batch)
    scores = [score_question(a["answer"], ex["answers"]) for a, ex in zip(answers, batch["examples"])]
    assert full["val/exact_match"] == pytest.approx(100 * sum(s[0] for s in scores) / 16, abs=1e-4)
    assert full["val/f1"] == pytest.approx(100 * sum(s[1] for s in scores) / 16, abs=1e-4)


def test_a_hub_dataset_in_the_squad_layout_reads_as_flat_rows(make_cfg, monkeypatch):
    """data=hub data.hub_name=squad: the hub's rows (answers as {"text": [...], "answer_start": [...]}); offline here,
    so the hub is stood in for by rows of the same layout."""
    import lmforge.data.datamodule as datamodule
    from lmforge.data.sources import HubSplits
    from lmforge.train import build_datamodule

    def row(i, title):
        context = f"{title} was founded in {1400 + i} by Mara Quell."
        return {"id": f"{title}-{i}", "title": title, "context": context, "question": f"When was {title} founded?",
                "answers": {"text": [str(1400 + i)], "answer_start": [context.index(str(1400 + i))]}}

    hub = HubSplits({"train": [row(i, t) for t in ("Arden", "Belmoor", "Corvale") for i in range(4)],
                     "validation": [row(9, "Dunmere")]})
    monkeypatch.setattr(datamodule, "load_hub", lambda name, config=None: hub)
    dm = build_datamodule(make_cfg(["task=question_answering", "data=hub", "data.hub_name=squad", *SMALL_DATA]))
    raw = dm.read_splits()
    assert len(raw["train"].rows) == 12 and raw["validation"].rows[0]["answers"]["text"] == ["1409"]
    dm.prepare_data()
    dm.setup("fit")
    assert dm.labelled_splits() == ["train", "validation"] and dm.answers_cut()["train"]["cut"] == 0


def _v2_file(tmp_path, split, n):
    """A SQuAD v2.0 file from the almanac sample: every third question asked of another passage is unanswerable."""
    rows = [json.loads(line) for line in (Path(__file__).parents[1] / f"src/lmforge/samples/almanac/{split}.jsonl")
            .read_text().splitlines()][:n]
    paragraphs = []
    for i, r in enumerate(rows):
        qa = {"id": r["id"], "question": r["question"], "is_impossible": False,
              "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])]}
        context = r["context"]
        if i % 3 == 2:  # the question asked of an unrelated passage
            context = rows[(i + 7) % len(rows)]["context"]
            qa.update(is_impossible=True, answers=[])
        paragraphs.append({"context": context, "qas": [qa]})
    return _write(tmp_path / f"{split}-v2.json", {"version": "v2.0", "data": [{"title": "almanac", "paragraphs": paragraphs}]})


def test_squad_v2_trains_abstains_and_reports_has_ans_and_no_ans(make_cfg, tmp_path):
    from lmforge.train import train

    train_file, dev_file = _v2_file(tmp_path, "train", 60), _v2_file(tmp_path, "validation", 30)
    cfg = make_cfg(["task=question_answering", "data=local", f"data.train_file={train_file}",
                    f"data.validation_file={dev_file}", f"data.test_file={dev_file}", "debug=fdr", *SMALL_DATA,
                    "extras.print_config=false"], name="v2")
    metrics = train(cfg)
    for stage in ("val", "test"):
        for k in ("exact_match", "f1", "has_ans_exact_match", "has_ans_f1", "no_ans_exact_match", "no_ans_f1"):
            assert f"{stage}/{k}" in metrics, sorted(metrics)
    run = Path(cfg.paths.output_dir)
    odds = json.loads((run / "null_odds.json").read_text())
    preds = json.loads((run / "predictions.json").read_text())
    assert set(odds) == set(preds) and all(isinstance(v, float) for v in odds.values())
    # the answer is empty exactly where the null score beats the best span (null_threshold 0)
    assert all((preds[q] == "") == (odds[q] > 0) for q in preds)


def test_gradients_are_dropped_right_after_the_optimizer_step(tiny_run):
    """Peak memory: Lightning clears gradients inside the next step's closure (after its forward pass, when the
    activations peak); the QA module drops them as soon as the optimizer has stepped. So no gradient is alive when a
    training batch starts, except inside an accumulation cycle (accumulate_grad_batches=2: the second batch of each
    cycle adds to the first one's gradients, which must still be there), and the parameters still learn."""
    import lightning as L

    from lmforge.train import build_datamodule, build_module

    cfg, _, _ = tiny_run
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    seen: list[tuple[str, int, bool]] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(("start", batch_idx, any(p.grad is not None for p in pl_module.parameters())))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(("step", trainer.global_step, all(p.grad is not None for p in pl_module.parameters()
                                                          if p.requires_grad)))

    accumulate = 2  # batches 0 and 2 open a cycle (after no step, after a step), 1 and 3 continue one
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, max_steps=2, accumulate_grad_batches=accumulate,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[Probe()])
    trainer.fit(module, datamodule=dm)
    starts = [(i, alive) for kind, i, alive in seen if kind == "start"]
    steps = [alive for kind, _, alive in seen if kind == "step"]
    assert len(starts) == 2 * accumulate and steps == [True, True]
    # a batch that opens a cycle finds no gradient; the others find their cycle's
    assert starts == [(i, i % accumulate != 0) for i in range(2 * accumulate)]
    assert all(p.grad is None for p in module.parameters())
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, module.parameters()))
