"""Instruction tuning (chat SFT) of a causal LM: a thin layer over ``AutoModelForCausalLM``.

* model: the causal-LM model building (:func:`lmforge.models.factory.build_model`): a pretrained causal LM or a
  finished causal-LM run's export (``model.name_or_path=``; its embeddings grow when the chat markers are new
  tokens), or a size preset from scratch; the answer ends at the template's end-of-turn token (the model's
  ``generation_config.eos_token_id``, saved into the export with the decoding settings);
* loss: next-token cross-entropy over the labelled tokens only (the assistant's answers, or every token with
  ``data.assistant_only_loss=false``), a mean over the batch's labelled tokens, so that a packed batch and the same
  conversations unpacked have the same loss;
* metrics: ``val/loss``, ``val/perplexity`` and ``val/accuracy`` over the assistant tokens of the validation
  conversations; at each validation (not the sanity check) the first ``task.val_generations`` validation prompts
  are answered with ``task.generation`` (greedy by default), printed and logged (``generations.jsonl``, a W&B
  table, TensorBoard text);
* prediction: ``predict.texts`` are user messages, ``predict.file`` conversations (or one user message a line);
  each is answered in the chat format; ``predictions.jsonl`` holds the inputs and the ``answer``,
  ``conversations.jsonl`` each conversation with the answer appended as the assistant's turn;
* dropout: ``task.dropout`` (0 by default, as SFT recipes commonly train; null keeps the model's own) replaces
  every dropout probability of the model;
* LoRA (``task.lora.enabled=true``, needs ``peft``): low-rank adapters on the attention projections; the export
  holds the merged weights, and with ``task.lora.save_adapter=true`` the adapter folder too (``export/adapter``);
* export: ``AutoModelForCausalLM`` + the tokenizer with its chat template, served by
  ``pipeline("text-generation")`` given a list of messages.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchmetrics as tm
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoModelForCausalLM

from lmforge.metrics import LanguageModelMetrics
from lmforge.models.factory import build_model, is_pretrained
from lmforge.models.generation import DEFAULTS, call_kwargs, generate, generation_kwargs
from lmforge.tasks.base import TaskModule, _plain
from lmforge.tasks.instruction_tuning.template import IGNORE, prompt_text
from lmforge.utils.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")
# LoRA's default targets: the attention projections of each family
LORA_TARGETS = {"gpt2": ["c_attn", "attn.c_proj"], "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"], "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "gpt_neox": ["query_key_value", "attention.dense"], "opt": ["q_proj", "k_proj", "v_proj", "out_proj"]}
# the config fields of the dropout probabilities (GPT-2, Llama, BERT-style, OPT/BART-style names)
DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout")
LORA_DEFAULTS = {"enabled": False, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, "save_adapter": False}


def chat_forward(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> Any:
    """The model's outputs for a batch: packed rows carry ``position_ids`` and no attention mask, from which
    transformers (5.x, GPT-2, Llama and the other models on its masking utilities) builds a block-diagonal causal
    mask. It does so only without a KV cache: ``use_cache=False`` (a forward pass with the cache that models make
    by default would let packed conversations attend to each other)."""
    return model(**{k: batch[k] for k in MODEL_KEYS if k in batch}, use_cache=False)


def keeps_packed_apart(model: torch.nn.Module) -> bool | None:
    """Whether the model keeps the sequences of a packed row apart: one forward pass of a 5-token row of two
    sequences (``position_ids`` 0 1 2 0 1, no attention mask, no cache), watching whether transformers' masking
    utilities found them (``find_packed_sequence_indices``, which every model built on them calls). Models with an
    attention of their own never call it, and a row's sequences would attend to each other there. None: not known
    (weights on the meta device)."""
    import transformers.masking_utils as masking

    params = list(model.parameters())
    if not params or params[0].device.type == "meta":
        return None
    device = params[0].device
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = torch.tensor([[1, 2, 3, 1, 2]], device=device) % vocab
    positions = torch.tensor([[0, 1, 2, 0, 1]], device=device)
    found: list[bool] = []
    real = masking.find_packed_sequence_indices

    def watched(position_ids: torch.Tensor) -> torch.Tensor | None:
        out = real(position_ids)
        found.append(out is not None)
        return out

    training = model.training
    masking.find_packed_sequence_indices = watched
    try:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids, position_ids=positions, use_cache=False)
    finally:
        masking.find_packed_sequence_indices = real
        model.train(training)
    return any(found)


def assistant_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each labelled token given the tokens before it (-100: not in the loss)."""
    targets = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets, ignore_index=IGNORE,
                           reduction="sum")
    return loss / (targets != IGNORE).sum().clamp(min=1)


def apply_lora(model: torch.nn.Module, lora: Mapping[str, Any]) -> torch.nn.Module:
    try:
        import peft
    except ImportError:
        raise ConfigError("task.lora.enabled=true needs peft: pip install 'lmforge[peft]' (or pip install peft)") from None
    kind = getattr(model.config, "model_type", None)
    targets = lora.get("target_modules") or LORA_TARGETS.get(str(kind))
    if not targets:
        raise ConfigError(f"task.lora: no default attention projections for model type {kind}; set "
                          "task.lora.target_modules=[...] (the names of its attention Linear layers)")
    config = peft.LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                             target_modules=list(targets), task_type="CAUSAL_LM", fan_in_fan_out=kind == "gpt2")
    wrapped = peft.get_peft_model(model, config)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    log.info("LoRA (r=%s) on %s: %s of %s parameters trained", lora["r"], ", ".join(targets), f"{trainable:,}",
             f"{total:,}")
    return wrapped


class InstructionTuningModule(TaskModule):
    auto_cls = AutoModelForCausalLM
    pipeline_task = "text-generation"
    prediction_fields = ("answer",)

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping, generation: Mapping | None = None,
                 val_generations: int = 4, lora: Mapping | bool | None = None, dropout: float | None = None,
                 **kwargs: Any):
        super().__init__(model, optimizer, scheduler, **kwargs)
        self.packed_attention: bool | None = None  # keeps_packed_apart of the built model
        if dropout is not None and not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"task.dropout={dropout}: expected a probability in [0, 1), or null (the model's own)")
        self.dropout = None if dropout is None else float(dropout)
        self.generation = {**DEFAULTS, **_plain(generation)}
        generation_kwargs({k: v for k, v in self.generation.items() if k != "batch_size"}, _NoTokenizer())  # keys
        self.val_generations = int(val_generations or 0)
        if isinstance(lora, bool):  # task.lora=true: the defaults below
            lora = {"enabled": lora}
        self.lora = {**LORA_DEFAULTS, **_plain(lora)}
        unknown = set(self.lora) - set(LORA_DEFAULTS)
        if unknown:
            raise ConfigError(f"task.lora: unknown key(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(LORA_DEFAULTS)}")

    # -- model -------------------------------------------------------------------------------
    def build_model(self, facts: Mapping) -> torch.nn.Module:
        facts = dict(facts)
        stop = [int(i) for i in facts.pop("stop_token_ids", None) or []]
        cfg = dict(self.model_cfg)
        if is_pretrained(cfg):
            vocab = facts.pop("vocab_size", None)  # the checkpoint's own size; grown below for new chat markers
            model = build_model(self.auto_cls, cfg, **{k: v for k, v in facts.items() if k == "pad_token_id"})
            if vocab and model.get_input_embeddings().num_embeddings < int(vocab):
                log.info("the tokenizer has %d tokens (chat markers added), the model %d embeddings: resized",
                         int(vocab), model.get_input_embeddings().num_embeddings)
                model.resize_token_embeddings(int(vocab), mean_resizing=True)
        else:
            model = build_model(self.auto_cls, cfg, **facts)
        gc = model.generation_config
        eos = facts.get("eos_token_id", model.config.eos_token_id)
        gc.eos_token_id = stop or eos
        gc.pad_token_id = facts.get("pad_token_id", eos)
        if facts.get("pad_token_id") is not None:
            model.config.pad_token_id = int(facts["pad_token_id"])
        g = self.generation
        gc.max_new_tokens, gc.max_length, gc.do_sample = int(g["max_new_tokens"]), None, bool(g["do_sample"])
        if g["do_sample"]:
            gc.temperature, gc.top_k, gc.top_p = float(g["temperature"]), int(g["top_k"]), float(g["top_p"])
        else:
            gc.temperature, gc.top_k, gc.top_p = None, None, None
        if self.dropout is not None:  # every dropout of the model (and its config, so the export says so)
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = self.dropout
            for k in DROPOUT_FIELDS:
                if isinstance(getattr(model.config, k, None), float):
                    setattr(model.config, k, self.dropout)
        # before LoRA and sharding: a plain forward pass of the model as built
        self.packed_attention = keeps_packed_apart(model)
        if self.lora["enabled"]:
            model = apply_lora(model, self.lora)
        return model

    def model_built(self) -> None:
        dm = self.attached_datamodule()
        if dm is None or not hasattr(dm, "use_padding_free"):
            return
        # how the datamodule collates, now that the models are known: every model that reads the rows (a
        # distillation teacher too) must keep their sequences apart
        supported, kinds = self.packed_attention, [str(getattr(self.trainable().config, "model_type", "?"))]
        for name, frozen in self.frozen_modules().items():
            apart = keeps_packed_apart(frozen)
            kinds.append(f"{name}: {getattr(frozen.config, 'model_type', '?')}")
            supported = False if False in (supported, apart) else (None if None in (supported, apart) else True)
        dm.use_padding_free(supported, ", ".join(kinds))

    def export(self, folder: str | Path, tokenizer: Any = None, state_dict: dict | None = None) -> Path:
        """The model (LoRA: the adapters merged into a copy of the weights; ``task.lora.save_adapter``: the adapter
        folder too, in ``<export>/adapter``) and the tokenizer with its chat template."""
        model = self.trainable()
        if not self.lora["enabled"]:
            return super().export(folder, tokenizer, state_dict)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.lora["save_adapter"]:
            model.save_pretrained(folder / "adapter")
            if tokenizer is not None:
                tokenizer.save_pretrained(folder / "adapter")
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return folder

    # -- forward and loss --------------------------------------------------------------------
    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # packed rows carry position_ids and no attention mask: transformers then keeps each conversation apart
        return {k: batch[k] for k in MODEL_KEYS if k in batch}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        return chat_forward(self.model, batch)

    def batch_size_of(self, batch: Mapping[str, Any]) -> int:
        # conversations: a packed or padding-free batch counts them (its rows are not conversations)
        return int(batch.get("num_sequences") or batch["input_ids"].shape[0])

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return assistant_loss(outputs.logits, batch["labels"])

    def make_metrics(self) -> tm.MetricCollection:
        return tm.MetricCollection({"lm": LanguageModelMetrics()})

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        metrics["lm"].update(outputs.logits[:, :-1], batch["labels"][:, 1:])

    # -- generations at validation -----------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        dm = self.trainer.datamodule
        if self.trainer.sanity_checking or dm is None or self.val_generations <= 0:
            return
        prompts = dm.val_prompts()[: self.val_generations]
        if not prompts:
            return
        # every rank generates (a sharded model's forward pass is a collective); rank 0 records
        texts = [prompt_text(dm.tokenizer, p["messages"]) for p in prompts]
        answers = generate(self.trainable(), dm.tokenizer, texts, self.generation, new_only=True,
                           progress="generating validation answers")
        if self.trainer.is_global_zero:
            self.log_generations(prompts, answers)

    def log_generations(self, prompts: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> None:
        from lmforge.loggers import log_table

        rows = [[p["messages"][-1]["content"], p["reference"], a] for p, a in zip(prompts, answers)]
        lines = [f"generated at step {self.global_step}:"]
        for user, ref, ans in rows:
            lines += [f"  user:      {_short(user)}", f"  reference: {_short(ref)}", f"  answer:    {_short(ans)}"]
        rank_zero_info("\n".join(lines))
        log_table(self.trainer, "generations", ["prompt", "reference", "answer"], rows)

    # -- prediction: user messages / conversations in, answers out ---------------------------
    @torch.no_grad()
    def predict(self, inputs: Sequence[Mapping[str, Any] | str], datamodule: Any, batch_size: int = 16) -> list[dict]:
        records = [{"text": x} if isinstance(x, str) else _plain(x) for x in inputs]  # config nodes: plain
        texts = datamodule.prompt_texts(records)
        answers = generate(self.trainable(), datamodule.tokenizer, texts, self.generation, new_only=True,
                           progress="generating answers")
        return [{**r, "answer": a} for r, a in zip(records, answers)]

    def field_prediction_files(self, records: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
        """``conversations.jsonl``: each input conversation with its answer as the assistant's turn (chat format)."""
        path = Path(folder) / "conversations.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in records:
                msgs = list(r["messages"]) if "messages" in r else [{"role": "user", "content": r.get("text", "")}]
                f.write(json.dumps({"messages": msgs + [{"role": "assistant", "content": r["answer"]}]},
                                   ensure_ascii=False) + "\n")
        return [path]

    @classmethod
    def records_from_pipeline(cls, pipe: Any, inputs: Sequence[Mapping[str, Any] | str],
                              generation: Mapping | None = None, **kwargs: Any) -> list[dict]:
        """Each input as a list of messages given to ``pipeline("text-generation")``; its new assistant message."""
        settings = {**DEFAULTS, **dict(generation or {})}
        gen = call_kwargs(settings, pipe.tokenizer)
        out = []
        for x in inputs:
            if isinstance(x, str) or "messages" not in x:
                messages = [{"role": "user", "content": x if isinstance(x, str) else x["text"]}]
            else:
                messages = list(x["messages"])
                if messages and messages[-1]["role"] == "assistant":
                    messages = messages[:-1]
            torch.manual_seed(int(settings["seed"]))
            result = pipe(messages, **gen)[0]["generated_text"]
            out.append({"answer": result[-1]["content"]})
        return out


class _NoTokenizer:
    pad_token_id = 0
    eos_token_id = 0


def _short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).splitlines())
    return text if len(text) <= n else text[: n - 3] + "..."
