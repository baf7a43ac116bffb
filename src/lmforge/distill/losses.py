"""Distillation losses, each a plain function of student and teacher outputs (no module state).

* :func:`soft_kl`: KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.,
  2015), averaged over the rows a mask keeps (examples, or labelled token positions);
* :func:`output_kd`: that KL (or MSE / cosine) picked by the shape of a task's outputs: sequence logits,
  token logits, QA start/end logits, sentence embeddings, regression scores;
* :func:`hidden_loss`: MSE or cosine distance between mapped hidden states (through a learned projection);
* :func:`relation_kl`: MiniLM's self-attention distribution and value-relation KL of one layer.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from lmforge.utils.errors import ConfigError

IGNORE = -100
# a masked-out logit: finite, so log-probabilities stay finite and masked entries contribute exactly 0
MASKED = -1.0e4


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the last dimension, averaged over the kept rows."""
    t = float(temperature)
    s_log = F.log_softmax(student.float() / t, dim=-1)
    t_log = F.log_softmax(teacher.float() / t, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1)
    if mask is not None:
        mask = mask.to(kl.dtype)
        return (kl * mask).sum() / mask.sum().clamp_min(1.0) * t * t
    return kl.mean() * t * t


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """MSE or cosine distance (1 - cos) between embeddings (or any vectors in the last dimension)."""
    if student.shape != teacher.shape:
        raise ConfigError(f"distill: student embeddings {tuple(student.shape)} and teacher embeddings "
                          f"{tuple(teacher.shape)} differ in width; distil sentence embeddings into a student of "
                          "the teacher's width (model.size.hidden_size) or from a teacher of the student's")
    if kind == "mse":
        return F.mse_loss(student.float(), teacher.float())
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    raise ConfigError(f"distill loss kind={kind}: expected mse or cosine")


def output_kd(student: Any, teacher: Any, batch: Mapping[str, torch.Tensor], temperature: float,
              positions: Callable[[torch.Tensor], torch.Tensor], regression: bool = False,
              embedding: str = "mse") -> torch.Tensor:
    """The soft-target loss for a task's outputs, chosen by what they hold.

    ``positions(logits)`` gives the token positions that count ([batch, length] bool) for token-level logits.
    """
    if isinstance(student, Mapping) and not hasattr(student, "logits"):  # sentence embeddings by role
        roles = [r for r in student if r in teacher and isinstance(student[r], torch.Tensor)]
        if not roles:
            raise ConfigError("distill: the student's and the teacher's outputs share no embedding")
        return sum(embedding_loss(student[r], teacher[r], embedding) for r in roles) / len(roles)
    if getattr(student, "start_logits", None) is not None:  # extractive QA: start and end distributions
        mask = batch.get("attention_mask")
        out = []
        for name in ("start_logits", "end_logits"):
            s, t = getattr(student, name).float(), getattr(teacher, name).float()
            if mask is not None and mask.shape == s.shape:
                s, t = s.masked_fill(mask == 0, MASKED), t.masked_fill(mask == 0, MASKED)
            out.append(soft_kl(s, t, temperature))
        return (out[0] + out[1]) / 2
    logits, t_logits = student.logits, teacher.logits
    if logits.shape != t_logits.shape:
        raise ConfigError(f"distill: student logits {tuple(logits.shape)} and teacher logits "
                          f"{tuple(t_logits.shape)} differ in shape (different label sets or vocabularies?)")
    if logits.ndim == 2:  # one prediction per example
        if regression:
            return F.mse_loss(logits.float(), t_logits.float())
        return soft_kl(logits, t_logits, temperature)
    return soft_kl(logits, t_logits, temperature, mask=positions(logits))  # one per token: labelled positions


def default_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student hidden state ``i`` (0 = embeddings, ``n`` = last layer) -> teacher state at the same relative depth."""
    return [(i, round(i * n_teacher / n_student)) for i in range(n_student + 1)]


def hidden_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                layer_map: Sequence[tuple[int, int]], projections: Sequence[torch.nn.Module],
                mask: torch.Tensor | None, kind: str = "mse") -> torch.Tensor:
    """Mean over the mapped pairs of the MSE / cosine distance between projected student and teacher states,
    over real (unpadded) positions."""
    total = 0.0
    for (si, ti), proj in zip(layer_map, projections):
        s = proj(student_states[si].float())
        t = teacher_states[ti].float()
        if kind == "mse":
            d = (s - t).pow(2).mean(-1)
        elif kind == "cosine":
            d = 1.0 - F.cosine_similarity(s, t, dim=-1)
        else:
            raise ConfigError(f"distill.hidden.loss={kind}: expected mse or cosine")
        if mask is not None and mask.shape == d.shape:
            m = mask.to(d.dtype)
            total = total + (d * m).sum() / m.sum().clamp_min(1.0)
        else:
            total = total + d.mean()
    return total / max(1, len(layer_map))


def relation(x: torch.Tensor, heads: int, mask: torch.Tensor | None, causal: bool,
             other: torch.Tensor | None = None) -> torch.Tensor:
    """Log of ``softmax(x_h y_h^T / sqrt(d_h))`` per relation head ``h`` ([batch, heads, length, length]);
    ``y`` is ``other`` (keys: the attention distribution) or ``x`` itself (MiniLM's value relation)."""
    b, n, width = x.shape
    if width % heads:
        raise ConfigError(f"distill.minilm.relation_heads={heads} does not divide the width {width}")
    y = x if other is None else other
    xh = x.float().view(b, n, heads, width // heads).transpose(1, 2)
    yh = y.float().view(b, n, heads, width // heads).transpose(1, 2)
    scores = xh @ yh.transpose(-1, -2) / (width // heads) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, MASKED)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, MASKED)
    return F.log_softmax(scores, dim=-1)


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, heads: int, mask: torch.Tensor | None,
                causal: bool, s_other: torch.Tensor | None = None, t_other: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher relation || student relation), averaged over heads and real query positions."""
    s = relation(student, heads, mask, causal, s_other)
    t = relation(teacher, heads, mask, causal, t_other)
    kl = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)  # [b, h, n]
    if mask is not None:
        m = mask[:, None, :].to(kl.dtype).expand_as(kl)
        return (kl * m).sum() / m.sum().clamp_min(1.0)
    return kl.mean()
