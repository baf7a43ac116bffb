"""Sentence embeddings end to end: short runs of a tiny BERT bi-encoder (one on the embedded scored sample,
one on unscored anchor/positive pairs with max pooling and normalisation), their metrics, predictions and
embeddings.npy, the export loaded by sentence-transformers and by AutoModel giving lmforge's vectors, the
Spearman/Pearson equal to sentence-transformers' EmbeddingSimilarityEvaluator, and MiniLM on the real
STS-B (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, compose_cfg, needs_shared
from lmforge.tasks.sentence_embedding.module import ExportEncoder, SentenceEmbeddingModule
from lmforge.train import train

try:
    import sentence_transformers
except ImportError:  # the test extra installs it
    sentence_transformers = None
needs_st = pytest.mark.skipif(sentence_transformers is None,
                              reason="sentence-transformers is not installed (pip install -e '.[dev]')")

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "samples" / "paraphrases"
TEXTS = ["The junior cook repaired a worn bike in the morning.", "Early in the day, a young chef fixed an old bicycle.",
         "My grandmother lost the map at the station.", "Ünïcode tëxt, with émojis 🙂 and a very long tail " * 8]
PAIRS = [{"text": "a man fixed the red bike", "text_pair": "the bike was repaired by a man"},
         {"text": "a woman sold a boat", "text_pair": "the rain fell all night"}]
SHORT = [*TINY, "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "data.batch_size=32"]


def _hydra_records(records: list[dict]) -> str:
    """A list of records in Hydra's override grammar: [{text:'...',text_pair:'...'}]."""
    return "[" + ",".join("{" + ",".join(f"{k}:'{v}'" for k, v in r.items()) + "}" for r in records) + "]"


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """The embedded paraphrase sample (cosine regression, mean pooling), one epoch of a tiny BERT."""
    base = tmp_path_factory.mktemp("embedding")
    cfg = compose_cfg([*SHORT, "task=sentence_embedding", "optimizer.lr=1e-3",
                       f"predict.texts={json.dumps(TEXTS, ensure_ascii=False)}"], base / "run", base / "cache")
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    """Unscored anchor/positive pairs (in-batch negatives), max pooling, normalised; predicts pairs."""
    base = tmp_path_factory.mktemp("embedding_pairs")
    for split in ("train", "validation"):
        rows = [r for r in _rows(split) if r["score"] >= 4]  # the paraphrases, as positive pairs
        (base / f"{split}.tsv").write_text("anchor\tpositive\n" + "".join(f"{r['sentence1']}\t{r['sentence2']}\n"
                                                                           for r in rows))
    cfg = compose_cfg([*SHORT, "task=sentence_embedding", "data=local", f"data.train_file={base / 'train.tsv'}",
                       f"data.validation_file={base / 'validation.tsv'}", "task.pooling=max", "task.normalize=true",
                       "optimizer.lr=1e-3", f"predict.texts={_hydra_records(PAIRS)}"], base / "run", base / "cache")
    return cfg, train(cfg)


def test_scored_run_reports_spearman_and_pearson(scored_run):
    cfg, metrics = scored_run
    for stage in ("val", "test"):
        assert -1 <= metrics[f"{stage}/spearman"] <= 1 and -1 <= metrics[f"{stage}/pearson"] <= 1
        assert metrics[f"{stage}/score"] == metrics[f"{stage}/spearman"]
    assert metrics["val/spearman"] > 0.3, metrics  # one epoch of a tiny model already orders the sample's pairs


def test_predictions_hold_text_and_norm_with_embeddings_beside(scored_run):
    cfg, _ = scored_run
    run = Path(cfg.paths.output_dir)
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    emb = np.load(run / "embeddings.npy")
    assert [r["text"] for r in records] == TEXTS and emb.shape == (len(TEXTS), 128)
    assert np.allclose([r["norm"] for r in records], np.linalg.norm(emb, axis=1), atol=1e-4)


def test_export_has_the_sentence_transformers_layout(scored_run, pairs_run):
    export = Path(scored_run[0].paths.output_dir) / "export"
    modules = json.loads((export / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    assert json.loads((export / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert json.loads((export / "sentence_bert_config.json").read_text())["max_seq_length"] == 128
    export = Path(pairs_run[0].paths.output_dir) / "export"
    assert [m["path"] for m in json.loads((export / "modules.json").read_text())] == ["", "1_Pooling", "2_Normalize"]
    assert json.loads((export / "1_Pooling" / "config.json").read_text())["pooling_mode_max_tokens"] is True
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(export)).__name__ == "BertModel"


@needs_st
@pytest.mark.parametrize("which", ["scored_run", "pairs_run"])
def test_sentence_transformers_loads_the_export_and_gives_lmforges_vectors(request, which):
    cfg, _ = request.getfixturevalue(which)
    run = Path(cfg.paths.output_dir)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(run / "export"), device="cpu")
    if which == "scored_run":
        theirs = model.encode(TEXTS, convert_to_numpy=True, batch_size=2)  # other batches, other padding
        assert np.abs(theirs - np.load(run / "embeddings.npy")).max() < 1e-5
    else:
        records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        a = model.encode([p["text"] for p in PAIRS], convert_to_tensor=True)
        b = model.encode([p["text_pair"] for p in PAIRS], convert_to_tensor=True)
        assert np.allclose(a.norm(dim=-1).numpy(), 1, atol=1e-5)  # the Normalize module is there
        cos = torch.nn.functional.cosine_similarity(a, b).numpy()
        assert np.abs(cos - np.array([r["cosine"] for r in records])).max() < 1e-5


def test_served_export_equals_the_runs_predictions(pairs_run):
    cfg, _ = pairs_run
    run = Path(cfg.paths.output_dir)
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    served = SentenceEmbeddingModule.serve(run / "export", PAIRS)
    for mine, theirs in zip(records, served):
        assert set(theirs) == {"cosine", "norm", "norm_pair"}
        assert all(abs(mine[k] - theirs[k]) < 1e-5 for k in theirs)


def test_unscored_pairs_report_retrieval(pairs_run):
    _, metrics = pairs_run
    assert 0 <= metrics["val/accuracy_at_1"] <= metrics["val/mrr_at_10"] <= 1
    assert metrics["val/score"] == metrics["val/mrr_at_10"]
    assert metrics["val/mrr_at_10"] > 0.1, metrics  # chance is about 0.05 among ~60 positives


@needs_st
def test_spearman_and_pearson_equal_sentence_transformers_evaluator(scored_run):
    """The run's test/* metrics (the exported weights, all 200 test pairs) against the evaluator on the export."""
    cfg, metrics = scored_run
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    rows = _rows("test")
    evaluator = EmbeddingSimilarityEvaluator([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
                                             [r["score"] / 5 for r in rows], name="sample")
    got = evaluator(SentenceTransformer(str(Path(cfg.paths.output_dir) / "export"), device="cpu"))
    assert abs(got["sample_spearman_cosine"] - metrics["test/spearman"]) < 1e-3
    assert abs(got["sample_pearson_cosine"] - metrics["test/pearson"]) < 1e-3


def test_search_ranks_the_corpus_per_query(scored_run):
    cfg, _ = scored_run
    from lmforge.train import build_datamodule, build_module

    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg)
    module.facts = dm.model_facts()
    module.configure_model()
    encoder = ExportEncoder(Path(cfg.paths.output_dir) / "export")
    module.trainable().load_state_dict(encoder.model.state_dict())
    hits = module.search(TEXTS[:1], TEXTS, dm, k=2)
    assert hits[0]["query"] == TEXTS[0] and hits[0]["hits"][0]["text"] == TEXTS[0]
    assert hits[0]["hits"][0]["cosine"] == pytest.approx(1.0, abs=1e-5) and len(hits[0]["hits"]) == 2


@pytest.mark.slow
def test_minilm_on_real_stsb(tmp_path):
    """MiniLM as shipped (zero-shot) on STS-B dev: Spearman of cosine >= 0.85 (measured 0.8672, the same as
    sentence-transformers' evaluator on the shipped model), evaluated without training."""
    needs_shared("stsb", "dev.tsv")
    cfg = compose_cfg(["experiment=stsb_embedding", "train=false", "test=false", "export=false",
                       "extras.print_config=false"], tmp_path / "run", tmp_path / "cache")
    from lmforge.train import build_datamodule, build_module
    import lightning as L

    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    out = trainer.validate(module, datamodule=dm)[0]
    assert out["val/spearman"] >= 0.85, out
