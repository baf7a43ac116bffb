"""Pooling and the bi-encoder's training objectives, written as sentence-transformers computes them.

* :func:`pool`: ``mean`` (padding excluded), ``cls`` (the first token) or ``max`` (padding set to
  -1e9 first), as ``sentence_transformers.models.Pooling`` does;
* :func:`cosine_loss`: MSE between cos(a, b) and the gold score scaled to [0, 1]
  (``CosineSimilarityLoss``);
* :func:`cosent_loss`: CoSENT (``CoSENTLoss``, scale 20): log(1 + sum over pairs ranked wrong by
  gold of exp(scale * (cos_j - cos_i)));
* :func:`mnrl_loss`: multiple-negatives ranking / InfoNCE (``MultipleNegativesRankingLoss``):
  cross-entropy of each anchor against every positive (and hard negative) of the batch, scaled by
  1 / temperature; under DDP the candidates are gathered from every rank with gradients through
  the local part (:func:`gather_with_grad`), so the negatives grow with the number of devices;
* :func:`triplet_loss`: ``TripletLoss`` (Euclidean distance, margin 5).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

POOLING = ("mean", "cls", "max")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """One vector per sequence from token states ``hidden`` (batch, length, width) and ``mask`` (1 = token)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    raise ValueError(f"pooling={mode!r}: expected one of {', '.join(POOLING)}")


def cosine_loss(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity regression; ``scores`` in [0, 1]."""
    return F.mse_loss(F.cosine_similarity(a.float(), b.float(), dim=-1), scores.float())


def cosent_loss(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: every pair (i, j) with gold_i > gold_j should have cos_i > cos_j."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1) * scale
    diff = cos[:, None] - cos[None, :]  # diff[i, j] = cos_i - cos_j, penalised where gold_i < gold_j
    wrong = scores[:, None] < scores[None, :]
    diff = diff - (~wrong).float() * 1e12
    diff = torch.cat([torch.zeros(1, device=diff.device), diff.flatten()])
    return torch.logsumexp(diff, dim=0)


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` from every rank concatenated (rank order), the local part keeping its gradient; and the
    offset of the local rows. One process: ``x`` itself. Every rank must hold the same number of rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = x  # gradients flow through this rank's own rows; each rank's loss covers its own anchors
    return torch.cat(parts), rank * x.shape[0]


def mnrl_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
              temperature: float = 0.05, gather: bool = True) -> torch.Tensor:
    """In-batch negatives: anchor i's positive is row i of the (gathered) positives; every other positive
    and every hard negative is a negative. ``temperature`` 0.05 is sentence-transformers' scale 20."""
    cands, offset = gather_with_grad(positives) if gather else (positives, 0)
    if negatives is not None:
        negs, _ = gather_with_grad(negatives) if gather else (negatives, 0)
        cands = torch.cat([cands, negs])
    sims = F.normalize(anchors.float(), dim=-1) @ F.normalize(cands.float(), dim=-1).T / temperature
    labels = torch.arange(anchors.shape[0], device=anchors.device) + offset
    return F.cross_entropy(sims, labels)


def triplet_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                 margin: float = 5.0) -> torch.Tensor:
    """max(0, |a - p| - |a - n| + margin), Euclidean distances, averaged."""
    d_pos = F.pairwise_distance(anchors.float(), positives.float(), p=2)
    d_neg = F.pairwise_distance(anchors.float(), negatives.float(), p=2)
    return F.relu(d_pos - d_neg + margin).mean()
