"""Causal-LM pretraining (GPT, Llama): a thin layer over ``AutoModelForCausalLM``.

Metrics: ``train/loss``; ``val/loss`` (mean next-token cross-entropy over every predicted token of
the validation blocks), ``val/perplexity`` (its exponential) and ``val/accuracy`` (next-token
top-1). At each validation (not the sanity check), text generated from ``task.prompts`` is printed,
appended to ``<run>/generations.jsonl`` and sent to the loggers that take text (TensorBoard,
W&B, MLflow).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torchmetrics as tm
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoModelForCausalLM

from lmforge.tasks.base import LMForgeModule, _plain

log = logging.getLogger(__name__)

GENERATION = {"max_new_tokens": 40, "do_sample": True, "temperature": 0.8, "top_k": 40, "seed": 0}


class CausalLMModule(LMForgeModule):
    auto_cls = AutoModelForCausalLM

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping, prompts: Sequence[str] | None = None,
                 generation: Mapping | None = None):
        super().__init__(model, optimizer, scheduler)
        self.prompts = [str(p) for p in (prompts or [])]
        self.generation = {**GENERATION, **_plain(generation)}
        self.metrics: torch.nn.ModuleDict | None = None

    def configure_model(self) -> None:
        super().configure_model()
        if self.metrics is None:
            self.metrics = torch.nn.ModuleDict({
                s: torch.nn.ModuleDict({"loss": tm.MeanMetric(), "accuracy": tm.MeanMetric()}) for s in ("val", "test")})

    def forward(self, input_ids: torch.Tensor) -> Any:
        return self.model(input_ids=input_ids, labels=input_ids)

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)  # streaming datasets: Lightning only tells samplers

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"]).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        ids = batch["input_ids"]
        out = self(ids)
        targets = ids[:, 1:]
        n = targets.numel()
        correct = (out.logits[:, :-1].argmax(-1) == targets).float().mean()
        self.metrics[stage]["loss"].update(out.loss.detach().float(), weight=n)
        self.metrics[stage]["accuracy"].update(correct, weight=n)

    def _eval_epoch_end(self, stage: str) -> None:
        m = self.metrics[stage]
        loss, acc = m["loss"].compute(), m["accuracy"].compute()  # token-weighted means, synced across ranks
        self.log_dict({f"{stage}/loss": loss, f"{stage}/perplexity": torch.exp(loss), f"{stage}/accuracy": acc},
                      prog_bar=stage == "val")
        m["loss"].reset()
        m["accuracy"].reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")
        if self.prompts and not self.trainer.sanity_checking:
            self.log_generations(self.generate_texts(self.prompts))

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate_texts(self, prompts: Sequence[str], tokenizer: Any = None) -> list[str]:
        """Continue each prompt. Every rank runs it (sharded models need all ranks); the seed is fixed, and
        training's RNG state is left untouched."""
        tok = tokenizer if tokenizer is not None else self.trainer.datamodule.tokenizer
        g = self.generation
        was_training = self.model.training
        self.model.eval()
        texts = []
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(g.get("seed", 0)))
            for prompt in prompts:
                ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
                if ids.shape[1] == 0:
                    ids = torch.tensor([[tok.bos_token_id or tok.eos_token_id]], device=self.device)
                kwargs = dict(max_new_tokens=int(g["max_new_tokens"]), do_sample=bool(g["do_sample"]),
                              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
                if g["do_sample"]:
                    kwargs.update(temperature=float(g["temperature"]), top_k=int(g["top_k"]))
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
                texts.append(tok.decode(out[0], skip_special_tokens=True))
        self.model.train(was_training)
        return texts

    def log_generations(self, texts: list[str]) -> None:
        if not self.trainer.is_global_zero:
            return
        step = self.global_step
        rows = [{"step": step, "prompt": p, "text": t} for p, t in zip(self.prompts, texts)]
        rank_zero_info("\n".join([f"generated at step {step}:"] + [f"  [{r['prompt']}] {r['text']!r}" for r in rows]))
        folder = Path(self.trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "generations.jsonl", "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        for lg in self.loggers:
            name = type(lg).__name__
            try:
                if name == "TensorBoardLogger":
                    md = "\n\n".join(f"**{r['prompt']}** → {r['text']}" for r in rows)
                    lg.experiment.add_text("val/generations", md, global_step=step)
                elif name == "WandbLogger":
                    lg.log_text(key="val/generations", columns=["step", "prompt", "text"],
                                data=[[r["step"], r["prompt"], r["text"]] for r in rows])
                elif name == "MLFlowLogger":
                    lg.experiment.log_text(lg.run_id, "\n".join(r["text"] for r in rows), f"generations/step{step:07d}.txt")
            except Exception as e:  # a logger that cannot take text must not stop training
                log.warning("could not log generations to %s: %s", name, e)
