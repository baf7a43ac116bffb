"""Token classification end to end: a run on CoNLL files as the world writes them (IOB1, CRLF, BOM, windows,
empty words), predictions.conll against seqeval, the export served by transformers.pipeline, eval.py on other
files and schemes, fast_dev_run, DDP on 2 CPU processes, and MiniLM on the real CoNLL-2003 (slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import TINY, compose_cfg, needs_shared, run_script
from lmforge.data.conll import from_iob2, read_conll, to_iob2
from lmforge.train import train

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "samples" / "newswire"
NEW_TEXTS = ["Maria Santos joined Northwind Energy in Lisbon last year.",
             "The French delegation met officials from the United Nations in Geneva on Monday.",
             "Prices rose 3 percent in the third quarter.",
             "Zoë Ångström-Nakamura flew from São Paulo to Kraków with Lufthansa."]
# a long sentence (windows at data.max_length=24) and words the tokenizer turns into nothing
EXTRA = [[("The", "O"), ("\u200b", "O"), ("Red", "B-ORG"), ("Cross", "I-ORG"), ("\x07", "O"), ("said", "O"),
          (".", "O")],
         [(w, t) for _ in range(4) for w, t in (("Maren", "B-PER"), ("Holt", "I-PER"), ("met", "O"),
                                                ("Tobias", "B-PER"), ("Kerr", "I-PER"), ("in", "O"),
                                                ("Buenos", "B-LOC"), ("Aires", "I-LOC"), ("and", "O"))]]


def _write_iob1(src: Path, dest: Path, limit: int, extra: list | None = None) -> list[list[tuple[str, str]]]:
    """The sample's IOB2 sentences as an IOB1 file with a byte-order mark and CRLF line ends."""
    sents = [list(zip(r["tokens"], r["tags"])) for r in read_conll(src)][:limit] + list(extra or [])
    lines = ["-DOCSTART- -X- O", ""]
    for s in sents:
        tags = from_iob2([t for _, t in s], "iob1")
        lines += [f"{w} X {t}" for (w, _), t in zip(s, tags)] + [""]
    dest.write_bytes(("\ufeff" + "\r\n".join(lines)).encode("utf-8"))
    return [[(w, t) for (w, _), t in zip(s, from_iob2([t for _, t in s], "iob1"))] for s in sents]


@pytest.fixture(scope="module")
def iob1_run(tmp_path_factory):
    """One short run of a tiny BERT on IOB1 files (windows: data.max_length=24), shared by the tests below."""
    base = tmp_path_factory.mktemp("ner")
    _write_iob1(SAMPLE / "train.txt", base / "train.iob", 256)
    _write_iob1(SAMPLE / "validation.txt", base / "valid.iob", 61)
    gold = _write_iob1(SAMPLE / "test.txt", base / "test.iob", 40, EXTRA)
    cfg = compose_cfg([*TINY, "task=token_classification", "data=local", f"data.train_file={base / 'train.iob'}",
                       f"data.validation_file={base / 'valid.iob'}", f"data.test_file={base / 'test.iob'}",
                       "data.max_length=24", "data.stride=6", "data.batch_size=16", "trainer.max_epochs=2",
                       "optimizer.lr=3e-3", f"predict.texts={json.dumps(NEW_TEXTS, ensure_ascii=False)}"],
                      base / "run", base / "cache")
    metrics = train(cfg)
    return base, cfg, metrics, gold


def _read_three_columns(path: Path) -> list[list[tuple[str, str, str]]]:
    """predictions.conll read the way conlleval reads it: fields split on single spaces, the last two are
    the gold and the predicted tag, a blank line ends a sentence; every line must have the same field count."""
    sents, cur = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line:
            if cur:
                sents.append(cur)
                cur = []
            continue
        fields = line.split(" ")
        assert len(fields) == 3, line
        assert all(re.fullmatch(r"O|[BIESLU]-\S+", t) for t in fields[1:]), line
        cur.append(tuple(fields))
    assert not cur, "the file ends with a blank line"
    return sents


def _end_of_chunk(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval's endOfChunk: does a chunk end between the previous token and this one?"""
    return ((prev, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}
            or (prev not in ("O", ".") and prev_type != kind) or prev in ("[", "]"))


def _start_of_chunk(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval's startOfChunk: does a chunk start at this token?"""
    return ((prev, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}
            or (tag not in ("O", ".") and prev_type != kind) or tag in ("[", "]"))


def conlleval_f1(path: Path) -> float:
    """The overall FB1 of the CoNLL ``conlleval`` script on ``path``, by its chunk rules (a port of its
    counting loop: the perl script itself is not on this machine)."""
    def split(tag: str) -> tuple[str, str]:
        m = re.fullmatch(r"([^-]*)-(.*)", tag)
        return (m.group(1), m.group(2)) if m else (tag, "")

    correct_chunks = found_correct = found_guessed = 0
    in_correct = False
    last_c, last_ct, last_g, last_gt = "O", "", "O", ""
    for line in path.read_text(encoding="utf-8").split("\n") + [""]:
        fields = line.split(" ") if line.strip() and not line.startswith("-DOCSTART-") else ["-X-", "O", "O"]
        (c, ct), (g, gt) = split(fields[-2]), split(fields[-1])
        if in_correct:
            end_c, end_g = _end_of_chunk(last_c, c, last_ct, ct), _end_of_chunk(last_g, g, last_gt, gt)
            if end_c and end_g and last_gt == last_ct:
                in_correct = False
                correct_chunks += 1
            elif end_c != end_g or gt != ct:
                in_correct = False
        start_c, start_g = _start_of_chunk(last_c, c, last_ct, ct), _start_of_chunk(last_g, g, last_gt, gt)
        if start_c and start_g and gt == ct:
            in_correct = True
        found_correct += start_c
        found_guessed += start_g
        last_c, last_ct, last_g, last_gt = c, ct, g, gt
    if in_correct:
        correct_chunks += 1
    precision = correct_chunks / found_guessed if found_guessed else 0.0
    recall = correct_chunks / found_correct if found_correct else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def test_predictions_conll_is_in_the_input_scheme_and_its_f1_is_lmforge_s(iob1_run):
    from seqeval.metrics import f1_score

    base, cfg, metrics, gold = iob1_run
    run = Path(cfg.paths.output_dir)
    sents = _read_three_columns(run / "predictions.conll")
    # every word of the test split exactly once, in order (the windowed sentence and the empty words too)
    assert [[w for w, _, _ in s] for s in sents] == [["_".join(w.split()) or "_" for w, _ in g] for g in gold]
    # gold as the file wrote it (IOB1), predictions converted to IOB1: B- only right after the same type
    assert [[t for _, t, _ in s] for s in sents] == [[t for _, t in g] for g in gold]
    for s in sents:
        pred = [p for _, _, p in s]
        assert from_iob2(to_iob2(pred, "iob1"), "iob1") == pred
    # the F1 conlleval (seqeval's default mode) computes from the file is lmforge's test F1
    y_true = [[g for _, g, _ in s] for s in sents]
    y_pred = [[p for _, _, p in s] for s in sents]
    assert abs(f1_score(y_true, y_pred) - metrics["test/f1"]) < 0.01, metrics
    assert abs(f1_score(y_true, y_pred) - metrics["test/f1"]) < 1e-5
    assert abs(conlleval_f1(run / "predictions.conll") - metrics["test/f1"]) < 0.01
    for key in ("test/precision", "test/recall", "test/accuracy", "test/f1_PER", "test/f1_LOC", "val/score"):
        assert key in metrics, key
    # the learning is visible even for a tiny model in two short epochs
    assert metrics["test/f1"] > 0.2, metrics


def test_windows_and_empty_words_are_reported(iob1_run):
    base, cfg, _, _ = iob1_run
    metas = [json.loads(p.read_text()) for p in Path(cfg.paths.cache_dir, "token_classification").glob("*/meta.json")]
    windows = next(m["windows"] for m in metas if "test" in m["windows"])
    assert windows["test"]["windowed_sentences"] >= 1 and windows["test"]["unknown_words"] == 2
    assert windows["test"]["windows"] > windows["test"]["sentences"]


def test_export_loads_in_transformers_and_the_pipeline_finds_our_entities(iob1_run):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from lmforge.tasks.token_classification.module import TokenClassificationModule

    base, cfg, _, _ = iob1_run
    run = Path(cfg.paths.output_dir)
    model = AutoModelForTokenClassification.from_pretrained(run / "export")
    assert model.config.id2label[0] == "O" and "B-PER" in model.config.label2id  # IOB2 labels, whatever the input
    ner = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(run / "export"),
                   aggregation_strategy="simple", device="cpu")
    ours = [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in ours] == NEW_TEXTS
    found = 0
    for text, mine in zip(NEW_TEXTS, ours):
        theirs = ner(text)
        assert [(e["entity_group"], e["start"], e["end"]) for e in theirs] == \
            [(e["type"], e["start"], e["end"]) for e in mine["entities"]]
        for t, m in zip(theirs, mine["entities"]):
            assert abs(float(t["score"]) - m["score"]) < 1e-4
            assert m["text"] == text[m["start"]: m["end"]]
        found += len(theirs)
    assert found > 0
    served = TokenClassificationModule.serve(run / "export", NEW_TEXTS)
    assert [s["tagged"] for s in served] == [r["tagged"] for r in ours]


def test_eval_reads_other_schemes_and_writes_them_back(iob1_run, tmp_path):
    """eval.py on the run: the test split again (same numbers), and an IOBES file (same entities, IOBES out)."""
    from lmforge.evaluate import evaluate

    base, cfg, metrics, gold = iob1_run
    run = Path(cfg.paths.output_dir)
    ev = evaluate(compose_cfg([f"run={run}", "split=test"], tmp_path / "again", tmp_path / "c", config_name="eval"))
    assert abs(ev["test/f1"] - metrics["test/f1"]) < 1e-6
    iobes = tmp_path / "test.iobes"
    lines = []
    for s in gold:
        tags = from_iob2(to_iob2([t for _, t in s], "iob1"), "iobes")
        lines += [f"{w}\t{t}" for (w, _), t in zip(s, tags)] + [""]
    iobes.write_text("\n".join(lines), encoding="utf-8")
    ev2 = evaluate(compose_cfg([f"run={run}", f"file={iobes}"], tmp_path / "iobes", tmp_path / "c", config_name="eval"))
    assert abs(ev2["file/f1"] - metrics["test/f1"]) < 1e-6
    written = _read_three_columns(tmp_path / "iobes" / "predictions.conll")
    assert any(t.startswith(("S-", "E-")) for s in written for _, g, p in s for t in (g, p))


def test_conll2003_recipe_reads_the_shared_files(tmp_path):
    cfg = compose_cfg(["experiment=conll2003"], tmp_path / "run", tmp_path / "cache")
    assert cfg.task.name == "token_classification" and cfg.task_name == "conll2003"
    assert cfg.data.train_file.endswith("conll2003/train.txt") and cfg.data.validation_file.endswith("conll2003/valid.txt")
    assert cfg.data.test_file is None  # the test split is not in ../shared/data


def test_fast_dev_run(make_cfg):
    metrics = train(make_cfg([*TINY, "task=token_classification", "debug=fdr"]))
    assert "test/f1" in metrics and 0.0 <= metrics["test/f1"] <= 1.0


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_the_same_f1(iob1_run, tmp_path):
    """The same checkpoint evaluated by 1 and by 2 processes: the 61 validation sentences (an odd count, so the
    distributed sampler repeats one) are gathered from both ranks and each is counted once."""
    base, cfg, _, _ = iob1_run
    run = Path(cfg.paths.output_dir)
    out = {}
    for devices in (1, 2):
        proc = run_script(["eval.py", f"run={run}", "split=validation", f"devices={devices}",
                           f"hydra.run.dir={tmp_path / str(devices)}"])
        assert (f"MEMBER: {devices}/{devices}" in proc.stdout + proc.stderr) == (devices > 1)
        out[devices] = json.loads((tmp_path / str(devices) / "metrics.json").read_text())
    assert out[1]["validation/f1"] > 0
    for key in ("validation/f1", "validation/precision", "validation/recall", "validation/accuracy"):
        assert abs(out[1][key] - out[2][key]) < 1e-6, (key, out)
    # the file written from the gathered predictions has every sentence once
    sents = _read_three_columns(tmp_path / "2" / "predictions.conll")
    assert len(sents) == 61


@pytest.mark.slow
def test_minilm_on_real_conll2003(make_cfg):
    needs_shared("conll2003", "train.txt")
    # 3,000 training sentences, one epoch; validation on 1,000 sentences of valid.txt
    metrics = train(make_cfg(["experiment=conll2003", "data.max_train_samples=3000", "data.max_eval_samples=1000",
                              "trainer.max_epochs=1", "trainer.val_check_interval=1.0", "predict.texts=null",
                              "export=false"]))
    assert not any(k.startswith("test/") for k in metrics), metrics  # no test split in ../shared/data
    assert metrics["val/f1"] >= 0.75, metrics
