"""Seq2seq data and metrics without training: parallel files as the world writes them (CRLF, BOM, trailing
blank lines), the hub's translation records, summarization tables with multi-line dialogues, every bad-input
message of the task, label padding and decoder-input shifting on hand-made batches, and BLEU/chrF/ROUGE
equal to sacrebleu (its API and its command line) and rouge-score on fixed strings."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from lmforge.tasks.seq2seq.data import IGNORE, collate_padding_free, collate_seq2seq
from lmforge.tasks.seq2seq.metrics import bleu_chrf, rouge
from lmforge.tasks.seq2seq.readers import read_parallel
from lmforge.train import build_datamodule
from lmforge.utils.errors import ConfigError, DataError

DE = ["Der Hund schläft im Park.", "Die Katze sieht einen roten Ball.", "Heute lacht das Kind."]
EN = ["The dog sleeps in the park.", "The cat sees a red ball.", "Today the child laughs."]


def _write(path: Path, lines: list[str], bom: bool = False, crlf: bool = False, trailing: int = 0) -> Path:
    end = "\r\n" if crlf else "\n"
    text = end.join(lines) + end + end * trailing
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return path


def _dm(tmp_path: Path, overrides: list[str]):
    cfg = compose_cfg(["extras.print_config=false", *overrides], tmp_path / "run", tmp_path / "cache")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_parallel_files_with_crlf_bom_and_trailing_blank_lines(tmp_path):
    _write(tmp_path / "train.de", DE, bom=True, crlf=True, trailing=2)
    _write(tmp_path / "train.en", EN, trailing=1)
    rows = read_parallel(tmp_path / "train.de", tmp_path / "train.en")
    assert [(r["source"], r["target"], r["__line__"]) for r in rows] == [(d, e, i) for i, (d, e) in enumerate(zip(DE, EN), 1)]


def test_parallel_files_of_different_lengths_name_both_files_counts_and_line(tmp_path):
    _write(tmp_path / "a.de", DE)
    _write(tmp_path / "a.en", EN[:2])
    with pytest.raises(DataError) as e:
        read_parallel(tmp_path / "a.de", tmp_path / "a.en")
    msg = str(e.value)
    assert f"{tmp_path / 'a.de'} has 3 lines, {tmp_path / 'a.en'} has 2" in msg
    assert f"{tmp_path / 'a.en'} ends after line 2, {tmp_path / 'a.de'} goes on at line 3" in msg


def test_a_parallel_prefix_trains_tokenizes_and_pads_labels(tmp_path):
    _write(tmp_path / "train.de", DE * 20, crlf=True)
    _write(tmp_path / "train.en", EN * 20)
    dm = _dm(tmp_path, ["task=translation", "data=local", f"data.train_file={tmp_path / 'train'}",
                        "data.validation_fraction=0.2", "data.tokenizer_training.vocab_size=200"])
    ds = dm.datasets["train"]
    assert ds.reference(0) in EN and ds.source(0) in DE
    tok = dm.tokenizer
    ex = [ds[0], ds[1], ds[2]]
    batch = dm.collate(ex)
    for i, e in enumerate(ex):
        n = len(e["labels"])
        assert batch["labels"][i, :n].tolist() == list(e["labels"])
        assert (batch["labels"][i, n:] == IGNORE).all()  # padding never in the loss
        assert int(e["labels"][-1]) == tok.eos_token_id  # every target ends with the end token
        assert batch["attention_mask"][i].sum() == len(e["input_ids"])
    assert tok.decode(ex[0]["labels"], skip_special_tokens=True) == ds.reference(0)
    facts = dm.model_facts()
    assert facts["decoder_start_token_id"] == tok.pad_token_id == 0 and facts["eos_token_id"] == 1


def test_hand_made_batch_label_padding_and_decoder_shift():
    from transformers import EncoderDecoderConfig, EncoderDecoderModel, BertConfig, T5Config, T5ForConditionalGeneration

    batch = collate_seq2seq([{"input_ids": [5, 6, 7, 1], "labels": [8, 9, 1]}, {"input_ids": [5, 1], "labels": [1]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [5, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 9, 1], [1, IGNORE, IGNORE]]
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=16, d_model=8, d_ff=8, num_layers=1, num_heads=1, d_kv=8,
                                             pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    assert t5.prepare_decoder_input_ids_from_labels(labels=batch["labels"]).tolist() == [[0, 8, 9], [0, 1, 0]]
    small = dict(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**small),
                                                            BertConfig(**small, is_decoder=True, add_cross_attention=True))
    cfg.decoder_start_token_id, cfg.pad_token_id = 2, 0  # [CLS] starts the decoder, [PAD] pads
    b2b = EncoderDecoderModel(config=cfg)
    assert b2b.prepare_decoder_input_ids_from_labels(labels=batch["labels"]).tolist() == [[2, 8, 9], [2, 1, 0]]


def test_padding_free_rows_hold_whole_pairs_each_target_shifted_on_its_own():
    ex = [{"input_ids": [5, 6, 7, 1], "labels": [8, 9, 1]}, {"input_ids": [5, 1], "labels": [1]},
          {"input_ids": [4, 4, 1], "labels": [7, 7, 7, 1]}, {"input_ids": [9, 1], "labels": [3, 1]}]
    b = collate_padding_free(ex, 0, 2)
    # rows of at most 8 source and 8 target tokens (twice the longest), longest source first (first fit: the third
    # pair joins the first, the second opens a row), the batch's order inside a row
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 4, 4, 1], [5, 1, 9, 1, 0, 0, 0]]
    assert b["source_segments"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, -1, -1, -1]]
    assert b["labels"].tolist() == [[8, 9, 1, 7, 7, 7, 1], [1, 3, 1] + [IGNORE] * 4]
    assert b["decoder_input_ids"].tolist() == [[2, 8, 9, 2, 7, 7, 7], [2, 2, 3, 0, 0, 0, 0]]  # the start token per pair
    assert b["target_segments"].tolist() == [[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, -1, -1, -1, -1]]
    assert b["num_sequences"] == 4 and b["num_tokens"] == 11 + 10


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padding_free_rows_give_the_padded_loss_for_t5(attention):
    """Twelve pairs of random lengths, a tiny T5 (its relative position bias, both attention implementations): the
    padding-free rows' loss equals the padded batch's (float32, 1e-5), and the same rows without the pair masks do
    not, so the masks are what keeps each pair to itself."""
    from transformers import T5Config, T5ForConditionalGeneration

    from lmforge.tasks.seq2seq.module import padding_free_forward

    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16,
                                             pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                             attn_implementation=attention)).eval()
    g = torch.Generator().manual_seed(1)
    ex = [{"input_ids": torch.randint(2, 40, (int(n),), generator=g).tolist() + [1],
           "labels": torch.randint(2, 40, (int(m),), generator=g).tolist() + [1]}
          for n, m in torch.randint(1, 12, (12, 2), generator=g)]

    def loss(logits, labels):
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                       ignore_index=IGNORE))

    padded = collate_seq2seq(ex, 0)
    free = collate_padding_free(ex, 0, 0)
    assert free["input_ids"].shape[0] < len(ex) and free["labels"].numel() < padded["labels"].numel()
    with torch.no_grad():
        want = loss(t5(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                       labels=padded["labels"]).logits, padded["labels"])
        got = loss(padding_free_forward(t5, {k: free[k] for k in ("input_ids", "decoder_input_ids", "source_segments",
                                                                  "target_segments")}).logits, free["labels"])
        leaky = loss(t5(input_ids=free["input_ids"], decoder_input_ids=free["decoder_input_ids"]).logits, free["labels"])
    assert abs(got - want) < 1e-5 and abs(leaky - want) > 1e-3


def test_padding_free_is_decided_by_the_model(tmp_path):
    dm = _dm(tmp_path, ["task=translation", "data.max_train_samples=64", "data.max_eval_samples=8"])
    assert dm.padding_free == "auto" and dm.flatten is False  # until the module says what the model is
    assert dm.use_padding_free(True, "t5", 0) is True
    batch = dm.train_collate([dm.datasets["train"][i] for i in range(8)])
    assert "source_segments" in batch and batch["num_sequences"] == 8
    assert "source_segments" not in dm.eval_collate([dm.datasets["validation"][i] for i in range(4)])  # padded
    assert dm.use_padding_free(False, "bart", 2) is False
    dm.padding_free = True
    with pytest.raises(ConfigError, match=r"data.padding_free=true: the model \(bart\)"):
        dm.use_padding_free(False, "bart", 2)
    with pytest.raises(ConfigError, match="data.padding_free=maybe: expected auto, true or false"):
        _dm(tmp_path / "bad", ["task=translation", "data.padding_free=maybe"])


def test_padding_free_auto_leaves_length_grouped_batches_padded(tmp_path, caplog):
    """Grouped batches have little padding, and a shared row costs up to twice a pair's attention: auto keeps them one
    pair a row (summarization's default); data.padding_free=true still shares rows."""
    dm = _dm(tmp_path, ["task=summarization", "data.max_train_samples=64", "data.max_eval_samples=8"])
    assert dm.group_by_length is True and dm.padding_free == "auto"
    with caplog.at_level(logging.INFO):
        assert dm.use_padding_free(True, "t5", 0) is False
    assert "the batches are grouped by length" in caplog.text
    assert "source_segments" not in dm.train_collate([dm.datasets["train"][i] for i in range(8)])
    dm.padding_free = True
    assert dm.use_padding_free(True, "t5", 0) is True
    assert "source_segments" in dm.train_collate([dm.datasets["train"][i] for i in range(8)])
    dm.padding_free, dm.group_by_length = "auto", False
    assert dm.use_padding_free(True, "t5", 0) is True  # random batches: shared rows


def test_translation_jsonl_records_and_tables_with_language_columns(tmp_path):
    with open(tmp_path / "t.jsonl", "w", encoding="utf-8") as f:
        for d, e in zip(DE * 10, EN * 10):
            f.write(json.dumps({"translation": {"de": d, "en": e}}, ensure_ascii=False) + "\n")
    dm = _dm(tmp_path, ["task=translation", "data=local", f"data.train_file={tmp_path / 't.jsonl'}",
                        "data.tokenizer_training.vocab_size=200"])
    assert {dm.datasets["train"].reference(i) for i in range(len(dm.datasets["train"]))} <= set(EN)
    (tmp_path / "t.tsv").write_text("de\ten\n" + "".join(f"{d}\t{e}\n" for d, e in zip(DE * 10, EN * 10)), encoding="utf-8")
    dm = _dm(tmp_path, ["task=translation", "data=local", f"data.train_file={tmp_path / 't.tsv'}",
                        "data.tokenizer_training.vocab_size=200"])
    assert dm.datasets["train"].source(0) in DE


def test_summarization_csv_with_crlf_dialogues_inside_quoted_fields(tmp_path):
    dialogue = "Anna: Hi Ben!\r\nBen: Hi :)\r\nAnna: Cinema on Friday?"
    rows = "".join(f'{i},"Anna and Ben go to the cinema on Friday.","{dialogue}"\r\n' for i in range(20))
    (tmp_path / "s.csv").write_bytes(("id,summary,dialogue\r\n" + rows).encode("utf-8"))
    dm = _dm(tmp_path, ["task=summarization", "data=local", f"data.train_file={tmp_path / 's.csv'}",
                        "data.tokenizer_training.vocab_size=200"])
    assert dm.datasets["train"].source(0) == dialogue  # the multi-line field as it is, CRLF included


def test_a_missing_summary_column_lists_the_columns_present(tmp_path):
    (tmp_path / "s.csv").write_text("id,dialogue,notes\n1,hello there,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no summary column; the columns present are: id, dialogue, notes"):
        _dm(tmp_path, ["task=summarization", "data=local", f"data.train_file={tmp_path / 's.csv'}"])
    with pytest.raises(DataError, match=r"no summary column 'abstract' \(data.target_column\); the columns present are: "
                                        r"id, dialogue, notes"):
        _dm(tmp_path, ["task=summarization", "data=local", f"data.train_file={tmp_path / 's.csv'}",
                       "data.target_column=abstract"])


def test_empty_lines_are_errors_with_file_and_line_or_skipped_and_counted(tmp_path, caplog):
    _write(tmp_path / "e.de", DE * 10)
    _write(tmp_path / "e.en", EN * 4 + [""] + EN * 5 + EN[:2])  # line 13 of the target is empty
    over = ["task=translation", "data=local", f"data.train_file={tmp_path / 'e'}", "data.validation_fraction=0",
            "data.tokenizer_training.vocab_size=200"]
    with pytest.raises(DataError, match=rf"^{tmp_path / 'e.en'}:13: empty target .*"
                                        r"data.skip_empty=true"):
        _dm(tmp_path, over)
    with caplog.at_level(logging.WARNING):
        dm = _dm(tmp_path, [*over, "data.skip_empty=true"])
    assert "skipped 1 of 30 pairs with an empty source or target" in caplog.text
    assert len(dm.datasets["train"]) == 29


def test_long_sources_are_truncated_counted_and_reported(tmp_path, caplog):
    long_de = " ".join(DE * 8)
    _write(tmp_path / "l.de", [long_de] * 3 + DE * 9)
    _write(tmp_path / "l.en", EN * 10)
    with caplog.at_level(logging.WARNING):
        dm = _dm(tmp_path, ["task=translation", "data=local", f"data.train_file={tmp_path / 'l'}",
                            "data.validation_fraction=0", "data.max_source_length=16",
                            "data.tokenizer_training.vocab_size=200"])
    assert "3 of 30 sources are longer than data.max_source_length=16 tokens and were truncated" in caplog.text
    assert dm.meta["truncated"]["train"]["sources"] == 3
    assert max(len(dm.datasets["train"][i]["input_ids"]) for i in range(30)) == 16
    assert all(dm.datasets["train"][i]["input_ids"][-1] == dm.tokenizer.eos_token_id for i in range(30))


def test_bert2bert_refuses_a_tokenizer_without_pad_or_cls(tmp_path):
    from lmforge.data.tokenizer_training import train_tokenizer

    train_tokenizer(DE + EN, "seq2seq", 200, tmp_path / "tok")  # pad and end tokens, no CLS
    with pytest.raises(ConfigError, match=r"model=bert2bert needs a tokenizer with a pad token and a CLS token .*"
                                          r"has no CLS token"):
        _dm(tmp_path, ["task=translation", "model=bert2bert", f"model.tokenizer={tmp_path / 'tok'}"])


def test_missing_languages_and_a_wrong_prefix_are_clear(tmp_path):
    with pytest.raises(DataError, match=r"neither a table file nor the prefix of parallel files \(looked for .*nope, "
                                        r".*nope.de and .*nope.en\)"):
        _dm(tmp_path, ["task=translation", "data=local", f"data.train_file={tmp_path / 'nope'}"])


HYPS = ["The cat sat on the mat.", "A man is riding a red bicycle down the street.", "Two dogs play in the snow",
        "It is raining today, isn't it?"]
REFS = ["The cat is sitting on the mat.", "A man rides a red bike along the street.", "Two dogs are playing in snow.",
        "It's raining today, isn't it?"]


def test_bleu_and_chrf_equal_sacrebleu_api_and_command_line(tmp_path):
    import sacrebleu

    ours = bleu_chrf(HYPS, REFS)
    assert ours["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert ours["chrf"] == sacrebleu.corpus_chrf(HYPS, [REFS]).score
    (tmp_path / "ref.txt").write_text("\n".join(REFS) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
                          "-m", "bleu", "chrf", "-b", "-w", "4"], capture_output=True, text=True, check=True).stdout
    bleu, chrf = (float(x) for x in json.loads(out))
    assert abs(bleu - ours["bleu"]) < 1e-4 and abs(chrf - ours["chrf"]) < 1e-4


def test_rouge_equals_rouge_score_with_stemming_and_newline_sentences():
    from rouge_score import rouge_scorer

    hyps = [*HYPS, "Anna and Ben meet on Friday.\nThey will go to the cinema."]
    refs = [*REFS, "Anna and Ben will go to the cinema.\nThey meet on Friday at 7 pm."]
    ours = rouge(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[k] == pytest.approx(100 * sum(s[k].fmeasure for s in scores) / len(scores), abs=1e-9)
    assert ours["rougeLsum"] != ours["rougeL"]  # Lsum reads the newline-separated sentences


def test_metric_scores_each_example_once_in_order():
    from lmforge.tasks.seq2seq.metrics import GeneratedText

    m = GeneratedText("translation")
    m.update(torch.tensor([2, 0]), [HYPS[2], HYPS[0]], [REFS[2], REFS[0]])
    m.update(torch.tensor([1, 3, 0]), [HYPS[1], HYPS[3], HYPS[0]], [REFS[1], REFS[3], REFS[0]])  # 0 repeated
    out = m.compute()
    assert [i for i, _, _ in m.last] == [0, 1, 2, 3]
    assert float(out["bleu"]) == pytest.approx(bleu_chrf(HYPS, REFS)["bleu"], abs=1e-4)
