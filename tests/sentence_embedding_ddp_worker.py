"""One rank of the gathered in-batch negatives test (tests/test_sentence_embedding_units.py), kept apart so
that the spawned processes import torch and the loss only, not the whole test module."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def fixed(n: int = 6, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def rank_main(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from lmforge.tasks.sentence_embedding.losses import mnrl_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    a, p, n = fixed(8)
    half = slice(rank * 4, rank * 4 + 4)
    la, lp, ln = (x[half].clone().requires_grad_() for x in (a, p, n))
    loss = mnrl_loss(la, lp, ln, temperature=0.05, gather=True)
    loss.backward()
    torch.save({"loss": loss.item(), "grad_p": lp.grad, "grad_a": la.grad}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
