"""Evaluation metrics of the bi-encoder, as torchmetrics objects (states synced across ranks).

* :class:`SimilarityCorrelation`: Pearson and Spearman correlation of cos(a, b) against the gold
  scores over the whole split, computed as sentence-transformers' ``EmbeddingSimilarityEvaluator``
  does (``scipy.stats.pearsonr`` / ``spearmanr`` on the cosine similarities, ties ranked by their
  average) and reported as fractions (its ``pearson_cosine`` / ``spearman_cosine``);
* :class:`PairRetrieval`: for unscored pairs, each anchor searches all positives of the split by
  cosine; accuracy@1 (its own positive ranks first) and MRR@10 (1 / rank of its positive when within
  the first 10, else 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics as tm
from torchmetrics.utilities.data import dim_zero_cat


class SimilarityCorrelation(tm.Metric):
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("cosine", default=[], dist_reduce_fx="cat")
        self.add_state("gold", default=[], dist_reduce_fx="cat")

    def update(self, a: torch.Tensor, b: torch.Tensor, gold: torch.Tensor) -> None:
        self.cosine.append(F.cosine_similarity(a.float(), b.float(), dim=-1).detach())
        self.gold.append(gold.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        from scipy.stats import pearsonr, spearmanr

        cos = dim_zero_cat(self.cosine).double().cpu().numpy()
        gold = dim_zero_cat(self.gold).double().cpu().numpy()
        if len(cos) < 2 or cos.std() == 0 or gold.std() == 0:
            nan = torch.tensor(float("nan"))
            return {"pearson": nan, "spearman": nan}
        return {"pearson": torch.tensor(float(pearsonr(gold, cos)[0])),
                "spearman": torch.tensor(float(spearmanr(gold, cos)[0]))}


class PairRetrieval(tm.Metric):
    full_state_update = False

    def __init__(self, k: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.k = k
        self.add_state("anchors", default=[], dist_reduce_fx="cat")
        self.add_state("positives", default=[], dist_reduce_fx="cat")

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.anchors.append(F.normalize(a.detach().float(), dim=-1))
        self.positives.append(F.normalize(b.detach().float(), dim=-1))

    def compute(self) -> dict[str, torch.Tensor]:
        a, p = dim_zero_cat(self.anchors), dim_zero_cat(self.positives)
        sims = a @ p.T
        own = sims.diagonal().unsqueeze(1)
        rank = (sims > own).sum(1) + 1  # 1-based rank of each anchor's own positive (ties in its favour)
        rr = torch.where(rank <= self.k, 1.0 / rank.float(), torch.zeros_like(rank, dtype=torch.float))
        return {"accuracy_at_1": (rank == 1).float().mean(), f"mrr_at_{self.k}": rr.mean()}
