"""Sentence embeddings, piece by piece (no training): pooling on hand-made padded batches, each loss
against a direct computation on fixed embeddings and against sentence-transformers' own loss where it
is installed, the in-batch negatives gathered over 2 CPU processes (gloo) against one process with the
whole batch, the metrics against scipy, and the data checks with their messages."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import compose_cfg
from sentence_embedding_ddp_worker import fixed, rank_main
from lmforge.tasks.sentence_embedding.losses import cosent_loss, cosine_loss, mnrl_loss, pool, triplet_loss
from lmforge.tasks.sentence_embedding.metrics import PairRetrieval, SimilarityCorrelation
from lmforge.train import build_datamodule
from lmforge.utils.errors import ConfigError, DataError

try:
    import sentence_transformers
except ImportError:  # the test extra installs it
    sentence_transformers = None
needs_st = pytest.mark.skipif(sentence_transformers is None,
                              reason="sentence-transformers is not installed (pip install -e '.[dev]')")


_fixed = fixed  # fixed embeddings, the same in the spawned ranks


# -- pooling -------------------------------------------------------------------------------------
def test_pooling_excludes_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                           [[-1.0, 0.0], [50.0, 50.0], [50.0, 50.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0], [-1.0, 0.0]]))
    assert torch.equal(pool(hidden, mask, "max"), torch.tensor([[3.0, 4.0], [-1.0, 0.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="pooling='sum'"):
        pool(hidden, mask, "sum")


# -- losses against a direct computation ---------------------------------------------------------
def test_cosine_loss_is_mse_of_cosine_against_scaled_scores():
    a, b, _ = _fixed()
    s = torch.linspace(0, 1, 6)
    cos = [float((x @ y) / (x.norm() * y.norm())) for x, y in zip(a, b)]
    assert cosine_loss(a, b, s).item() == pytest.approx(sum((c - t) ** 2 for c, t in zip(cos, s.tolist())) / 6, rel=1e-5)


def test_cosent_loss_direct():
    a, b, _ = _fixed()
    s = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 0.7])
    cos = [20 * float((x @ y) / (x.norm() * y.norm())) for x, y in zip(a, b)]
    terms = [math.exp(cos[i] - cos[j]) for i in range(6) for j in range(6) if s[i] < s[j]]
    assert cosent_loss(a, b, s).item() == pytest.approx(math.log(1 + sum(terms)), rel=1e-5)


def test_mnrl_loss_direct_with_hard_negatives():
    a, p, n = _fixed()
    cands = torch.cat([p, n])
    total = 0.0
    for i in range(6):
        logits = [20 * float((a[i] @ c) / (a[i].norm() * c.norm())) for c in cands]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert mnrl_loss(a, p, n, temperature=0.05).item() == pytest.approx(total / 6, rel=1e-5)


def test_triplet_loss_direct():
    a, p, n = _fixed()
    want = sum(max(0.0, float((x - y).norm() - (x - z).norm()) + 5.0) for x, y, z in zip(a, p, n)) / 6
    assert triplet_loss(a, p, n, margin=5.0).item() == pytest.approx(want, rel=1e-4)


@needs_st
def test_losses_equal_sentence_transformers_own():
    """The same fixed embeddings through sentence-transformers' loss functions (their model bypassed)."""
    from sentence_transformers import losses as st

    a, p, n = _fixed()
    s = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.0, 0.7])

    class Fixed(torch.nn.Module):  # returns the i-th fixed embedding block per input feature dict
        def __init__(self, embs):
            super().__init__()
            self.embs = list(embs)

        def forward(self, features):
            return {"sentence_embedding": self.embs.pop(0)}

    assert st.CoSENTLoss(Fixed([a, p]))([{}, {}], s).item() == pytest.approx(cosent_loss(a, p, s).item(), rel=1e-5)
    assert st.CosineSimilarityLoss(Fixed([a, p]))([{}, {}], s).item() == pytest.approx(cosine_loss(a, p, s).item(), rel=1e-5)
    assert st.MultipleNegativesRankingLoss(Fixed([a, p, n]))([{}, {}, {}], None).item() == \
        pytest.approx(mnrl_loss(a, p, n).item(), rel=1e-5)


# -- in-batch negatives gathered over 2 processes -------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_negatives_over_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    mp.start_processes(rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    a, p, n = (x.clone().requires_grad_() for x in _fixed(8))
    whole = mnrl_loss(a, p, n, temperature=0.05, gather=False)
    whole.backward()
    # DDP averages the ranks: the mean of the two local losses is the whole batch's loss
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(whole.item(), rel=1e-5)
    # each anchor saw all 8 positives and 8 negatives: its gradient is the whole batch's (DDP's 1/2 aside)
    assert torch.allclose(torch.cat([r["grad_a"] for r in ranks]) / 2, a.grad, atol=1e-6)
    assert all(r["grad_p"] is not None and r["grad_p"].abs().sum() > 0 for r in ranks)  # gradients through the local part
    # the local negatives really are gathered: one rank alone (4 anchors, 4 + 4 candidates) gives another loss
    alone = mnrl_loss(a[:4].detach(), p[:4], n[:4], gather=False).item()
    assert alone != pytest.approx(ranks[0]["loss"], rel=1e-3)


# -- metrics ------------------------------------------------------------------------------------
def test_similarity_correlation_is_scipy_on_cosine():
    from scipy.stats import pearsonr, spearmanr

    a, b, _ = _fixed(40, 8)
    gold = torch.tensor([float(i % 6) for i in range(40)])  # ties, as STS-B has
    m = SimilarityCorrelation()
    m.update(a[:25], b[:25], gold[:25])
    m.update(a[25:], b[25:], gold[25:])
    got = m.compute()
    cos = F.cosine_similarity(a, b).numpy()
    assert got["spearman"].item() == pytest.approx(spearmanr(gold.numpy(), cos)[0], abs=1e-6)
    assert got["pearson"].item() == pytest.approx(pearsonr(gold.numpy(), cos)[0], abs=1e-6)


def test_pair_retrieval_accuracy_and_mrr():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
    m = PairRetrieval(k=10)
    m.update(anchors, positives)
    got = m.compute()
    # anchor 0 ranks its own positive first; anchors 1 and 2 second (a tie counts in the anchor's favour)
    assert got["accuracy_at_1"].item() == pytest.approx(1 / 3)
    assert got["mrr_at_10"].item() == pytest.approx((1 + 0.5 + 0.5) / 3)


# -- data: formats and bad input --------------------------------------------------------------------
def _dm(tmp_path, cache_dir, rows_or_text, overrides=(), name="train.tsv"):
    path = tmp_path / name
    path.write_text(rows_or_text if isinstance(rows_or_text, str) else
                    "".join(json.dumps(r) + "\n" for r in rows_or_text))
    cfg = compose_cfg(["task=sentence_embedding", "data=local", f"data.train_file={path}", *overrides],
                      tmp_path / "run", cache_dir)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm, path


PAIRS = "".join(f"anchor {i} text\tpositive {i} words\n" for i in range(20))


def test_columns_detected_and_objective_chosen(tmp_path, cache_dir):
    dm, _ = _dm(tmp_path, cache_dir, "anchor\tpositive\n" + PAIRS)
    assert dm.meta["columns"] == {"a": "anchor", "b": "positive", "n": None, "score": None}
    assert dm.model_facts()["objective"] == "mnrl"
    rows = [{"query": f"q {i}", "document": f"d {i}", "negative": f"n {i}"} for i in range(20)]
    dm, _ = _dm(tmp_path, cache_dir, rows, ["data.batch_size=4"], name="t.jsonl")
    assert dm.meta["columns"] == {"a": "query", "b": "document", "n": "negative", "score": None}
    batch = next(iter(dm.train_dataloader()))
    assert {"input_ids", "pair_input_ids", "neg_input_ids", "neg_attention_mask"} <= set(batch)


def test_scores_scaled_from_the_detected_range(tmp_path, cache_dir):
    text = "sentence1\tsentence2\tscore\n" + "".join(f"a {i}\tb {i}\t{i % 6}.0\n" for i in range(30))
    dm, _ = _dm(tmp_path, cache_dir, text, ["data.validation_fraction=0"])
    assert dm.meta["score_range"] == [0.0, 5.0] and dm.meta["objective"] == "cosine"
    assert sorted(set(dm.datasets["train"].arrays["labels"].tolist())) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])


def test_score_outside_the_declared_range_names_file_and_line(tmp_path, cache_dir):
    text = "sentence1\tsentence2\tscore\n" + "".join(f"a {i}\tb {i}\t{4.5 if i != 7 else 5.5}\n" for i in range(20))
    with pytest.raises(DataError, match=r"train\.tsv:9: score 5\.5 in column 'score' is outside \[0, 5\], "
                                        r"the declared range \(data\.score_range\)"):
        _dm(tmp_path, cache_dir, text, ["data.score_range=[0,5]"])


def test_empty_text_names_file_and_line(tmp_path, cache_dir):
    text = "sentence1\tsentence2\tscore\n" + "".join(f"a {i}\t{'' if i == 3 else 'b'}\t1.0\n" for i in range(20))
    with pytest.raises(DataError, match=r"train\.tsv:5: empty or non-text value .* in column 'sentence2'"):
        _dm(tmp_path, cache_dir, text)


def test_one_text_column_lists_the_columns(tmp_path, cache_dir):
    text = "text\tlabel\n" + "".join(f"a {i}\t1\n" for i in range(20))
    with pytest.raises(DataError, match=r"needs two text columns \(a pair\), found 1 \('text'\) among its columns: "
                                        r"text, label; set data.text_column=<name> and data.text_pair_column=<name>"):
        _dm(tmp_path, cache_dir, text)


def test_mnrl_with_a_batch_of_one_is_refused(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="task.loss=mnrl with data.batch_size=1: in-batch negatives need at least 2"):
        _dm(tmp_path, cache_dir, "anchor\tpositive\n" + PAIRS, ["task.loss=mnrl", "data.batch_size=1"])
    with pytest.raises(ConfigError, match=r"task.loss=mnrl \(chosen for unscored pairs\) with data.batch_size=1"):
        _dm(tmp_path, cache_dir, "anchor\tpositive\n" + PAIRS, ["data.batch_size=1"])


def test_cosent_on_unscored_pairs_is_refused(tmp_path, cache_dir):
    with pytest.raises(DataError, match="task.loss=cosent needs a similarity score column"):
        _dm(tmp_path, cache_dir, "anchor\tpositive\n" + PAIRS, ["task.loss=cosent"])


def test_a_named_score_column_that_is_absent_is_an_error_not_unscored_pairs(tmp_path, cache_dir):
    text = "sentence1\tsentence2\tscore\n" + "".join(f"a {i}\tb {i}\t1.0\n" for i in range(20))
    with pytest.raises(DataError, match=r"data.label_column='sim' is not a column of .*train\.tsv; its columns are: "
                                        r"sentence1, sentence2, score"):
        _dm(tmp_path, cache_dir, text, ["data.label_column=sim"])
