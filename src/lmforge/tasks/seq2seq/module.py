"""Translation and summarization: one thin layer over ``AutoModelForSeq2SeqLM`` (T5, BART, any pretrained
seq2seq checkpoint) and ``EncoderDecoderModel`` (``model=bert2bert``: an encoder warm-started on both sides).

* loss: token cross-entropy over the target tokens (labels padded with -100 are never in it), with
  ``task.module.label_smoothing``; the decoder inputs are the labels shifted right by the model
  (``prepare_decoder_input_ids_from_labels``), starting at its decoder start token;
* validation: the loss on every batch; generation (the slow part) only on the first
  ``task.generate_val_samples`` examples, and only every ``task.generate_every_n_val`` validations;
  a few generated texts are printed and logged (``generations.jsonl``, a W&B table, TensorBoard text);
* metrics (:mod:`.metrics`): translation ``bleu`` (= ``score``) and ``chrf`` as ``sacrebleu`` computes
  them, summarization ``rouge1``, ``rouge2``, ``rougeL`` (= ``score``), ``rougeLsum`` as ``rouge-score``
  computes them; corpus-level over all ranks' outputs;
* the test loop (``train.py``'s test split, ``eval.py split=...`` or ``file=...``) writes
  ``<split>/predictions.jsonl`` (source, reference, prediction), ``<split>/hypotheses.txt`` and
  ``<split>/references.txt``, one line per example in order, as ``sacrebleu`` and ``rouge-score`` read them;
* prediction: ``{"source", "prediction"}`` records; ``hypotheses.txt`` beside ``predictions.jsonl``;
* export: the model, the tokenizer, and a ``generation_config.json`` holding the task's decoding settings and
  the model's start, end and pad tokens, so that ``model.generate`` with the export alone gives lmforge's own
  predictions (:meth:`Seq2SeqModule.serve`, which transformers 5 has no pipeline for).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchmetrics as tm
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoModelForSeq2SeqLM

from lmforge.models.factory import _plain as plain_cfg
from lmforge.models.factory import build_model, trust_remote_code
from lmforge.models.generation import DEFAULTS, generate_ids, generation_kwargs
from lmforge.tasks.base import TaskModule, _plain, as_records, batched, length_order
from lmforge.tasks.seq2seq.metrics import GeneratedText
from lmforge.tasks.seq2seq.predictor import SERVE_KEY, Seq2SeqPredictor
from lmforge.utils.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask")
# models that compute a padding-free row (several pairs, each kept to itself by masks) as each pair alone: T5's
# relative position bias depends on the distance between two tokens only; learned absolute positions (BART) do not
PADDING_FREE_FAMILIES = ("t5", "mt5", "umt5")
PACKED_KEYS = ("input_ids", "decoder_input_ids", "source_segments", "target_segments")


def segment_masks(model: torch.nn.Module, seg_s: torch.Tensor, seg_t: torch.Tensor) -> tuple[Any, Any, Any]:
    """The encoder's, the decoder's (causal) and the cross-attention masks of padding-free rows, 4-D and additive
    (0 where a token may attend, the dtype's minimum elsewhere), which transformers passes to eager and sdpa attention
    as they are: a token attends to the tokens of its own pair only; padding (segment -1) attends anywhere (its
    outputs carry no label), and no pair's token attends to padding."""
    dtype = model.get_input_embeddings().weight.dtype  # the mask is added to the scores in the model's dtype
    low = torch.finfo(dtype).min

    def additive(q_seg: torch.Tensor, kv_seg: torch.Tensor, causal: bool = False) -> torch.Tensor:
        allowed = (q_seg[:, :, None] == kv_seg[:, None, :]) | (q_seg[:, :, None] < 0)
        if causal:
            allowed &= torch.ones(q_seg.shape[1], kv_seg.shape[1], dtype=torch.bool, device=q_seg.device).tril()
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, low)[:, None]

    return additive(seg_s, seg_s), additive(seg_t, seg_t, causal=True), additive(seg_t, seg_s)


def padding_free_forward(model: torch.nn.Module, inputs: Mapping[str, Any]) -> Any:
    """The model's outputs for padding-free rows (``source_segments`` / ``target_segments`` from the collator): the
    encoder runs with its own mask, then the model with the encoder's outputs, the cross-attention mask (which the
    model hands to its decoder as ``encoder_attention_mask``) and the causal decoder mask."""
    inputs = dict(inputs)
    enc_mask, dec_mask, cross_mask = segment_masks(model, inputs.pop("source_segments"), inputs.pop("target_segments"))
    ids = inputs.pop("input_ids")
    shown = {k: inputs[k] for k in ("output_hidden_states", "output_attentions") if k in inputs}
    encoded = model.get_encoder()(input_ids=ids, attention_mask=enc_mask, return_dict=True, **shown)
    return model(encoder_outputs=encoded, attention_mask=cross_mask, decoder_attention_mask=dec_mask, use_cache=False,
                 **inputs)
SCORE = {"translation": "bleu", "summarization": "rougeL"}
# where the export keeps what serving needs besides the model (config.task_specific_params)


def build_bert2bert(model_cfg: Mapping, facts: Mapping) -> torch.nn.Module:
    """An ``EncoderDecoderModel`` from a pretrained encoder on both sides (the decoder made causal, with
    cross-attention added), or at random from the same configs when ``model.pretrained=false`` (eval.py,
    which loads the weights from the checkpoint)."""
    from transformers import AutoConfig, EncoderDecoderConfig, EncoderDecoderModel

    enc = model_cfg.get("name_or_path")
    if not enc:
        raise ConfigError("model=bert2bert needs model.name_or_path=<a pretrained encoder> (default: the offline MiniLM)")
    dec = model_cfg.get("decoder_name_or_path") or enc
    remote = trust_remote_code(model_cfg)
    attn = model_cfg.get("attn_implementation") or "sdpa"
    tie = bool(model_cfg.get("tie_encoder_decoder", False))
    if model_cfg.get("pretrained", True):
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the report of the fresh cross-attention weights: said below
        try:
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                enc, dec, tie_encoder_decoder=tie, encoder_attn_implementation=attn, decoder_attn_implementation=attn,
                encoder_trust_remote_code=remote, decoder_trust_remote_code=remote)
        finally:
            transformers.logging.set_verbosity(verbosity)
        log.info("bert2bert: encoder and decoder from %s%s; the decoder's cross-attention is new (random init)",
                 enc, f" and {dec}" if dec != enc else "")
    else:
        enc_cfg = AutoConfig.from_pretrained(enc, trust_remote_code=remote)
        dec_cfg = AutoConfig.from_pretrained(dec, trust_remote_code=remote)
        dec_cfg.is_decoder, dec_cfg.add_cross_attention = True, True
        config = EncoderDecoderConfig.from_encoder_decoder_configs(enc_cfg, dec_cfg, tie_encoder_decoder=tie)
        model = EncoderDecoderModel(config=config)
    for k in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id"):
        if facts.get(k) is not None:
            setattr(model.config, k, int(facts[k]))
    return model


class Seq2SeqModule(TaskModule):
    auto_cls = AutoModelForSeq2SeqLM
    pipeline_task = None  # transformers 5 has no translation/summarization pipeline: serve() below
    prediction_fields = ("prediction",)

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping, kind: str = "translation",
                 generation: Mapping | None = None, label_smoothing: float = 0.0, generate_val_samples: int | None = 256,
                 generate_every_n_val: int = 1, log_samples: int = 3, source_prefix: str = "",
                 max_source_length: int = 128, **kwargs: Any):
        super().__init__(model, optimizer, scheduler, **kwargs)
        if kind not in SCORE:
            raise ConfigError(f"task.kind={kind}: expected translation or summarization")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"task.module.label_smoothing={label_smoothing}: expected a value in [0, 1)")
        if int(generate_every_n_val) < 1:
            raise ConfigError(f"task.generate_every_n_val={generate_every_n_val}: expected 1 or more")
        self.kind = kind
        self.score_metric = SCORE[kind]
        self.generation = {**DEFAULTS, **_plain(generation)}
        generation_kwargs({k: v for k, v in self.generation.items() if k != "batch_size"}, _NoTokenizer())  # check keys
        self.label_smoothing = float(label_smoothing)
        self.generate_val_samples = None if generate_val_samples is None else int(generate_val_samples)
        self.generate_every_n_val = int(generate_every_n_val)
        self.log_samples = int(log_samples)
        self.source_prefix, self.max_source_length = source_prefix or "", int(max_source_length)
        self._validations = 0
        self._generating = False
        self._shown: Any = None  # the evaluation loop's generation, shown as one line when it ends (utils.progress)

    # -- model -------------------------------------------------------------------------------
    def build_model(self, facts: Mapping) -> torch.nn.Module:
        cfg = plain_cfg(self.model_cfg)
        if cfg.get("family") == "bert2bert":
            model = build_bert2bert(cfg, facts)
        else:
            model = build_model(self.auto_cls, cfg, **facts)
        self._set_generation_config(model, facts)
        return model

    def _set_generation_config(self, model: Any, facts: Mapping) -> None:
        """The model's own start/end/pad tokens and the task's decoding settings, in ``generation_config``
        (saved into the export as generation_config.json)."""
        gc = model.generation_config
        for k in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id"):
            v = facts.get(k, getattr(model.config, k, None))
            if v is not None:
                setattr(gc, k, int(v))
                setattr(model.config, k, int(v))
        if "vocab_size" in facts:  # from scratch or bert2bert: no token is forced at either end
            gc.forced_bos_token_id = None
            gc.forced_eos_token_id = None
            for attr in ("forced_bos_token_id", "forced_eos_token_id"):
                if hasattr(model.config, attr):
                    setattr(model.config, attr, None)
        g = self.generation
        gc.max_new_tokens = int(g["max_new_tokens"])
        gc.max_length = None
        gc.num_beams = int(g["num_beams"])
        gc.do_sample = bool(g["do_sample"])
        gc.length_penalty = float(g["length_penalty"])
        gc.no_repeat_ngram_size = int(g["no_repeat_ngram_size"] or 0)
        gc.repetition_penalty = float(g["repetition_penalty"])
        gc.early_stopping = True if int(g["num_beams"]) > 1 else False
        if g["do_sample"]:
            gc.temperature, gc.top_k, gc.top_p = float(g["temperature"]), int(g["top_k"]), float(g["top_p"])
        else:
            gc.temperature, gc.top_k, gc.top_p = None, None, None
        from lmforge.serving import PREDICTOR_KEY, predictor_name

        setattr(model.config, PREDICTOR_KEY, predictor_name(Seq2SeqPredictor))  # what lmforge.load builds
        model.config.task_specific_params = {**(getattr(model.config, "task_specific_params", None) or {}),
                                             SERVE_KEY: {"kind": self.kind, "source_prefix": self.source_prefix,
                                                         "max_source_length": self.max_source_length,
                                                         "batch_size": int(g["batch_size"])}}

    # -- forward and loss --------------------------------------------------------------------
    def model_built(self) -> None:
        dm = self.attached_datamodule()
        if dm is None or not hasattr(dm, "use_padding_free"):
            return
        # training batches padding-free where every model that reads them (a distillation teacher too) keeps a
        # row's pairs apart
        models = [self.trainable(), *self.frozen_modules().values()]
        kinds = [str(getattr(m.config, "model_type", "?")) for m in models]
        dm.use_padding_free(all(k in PADDING_FREE_FAMILIES for k in kinds), ", ".join(kinds),
                            int(self.trainable().config.decoder_start_token_id or 0))

    def forward(self, batch: Mapping[str, Any]) -> Any:
        inputs = self.model_inputs(batch)
        if "source_segments" in inputs:
            return padding_free_forward(self.model, inputs)
        return self.model(**inputs)

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "source_segments" in batch:  # padding-free rows: the collator shifted each target on its own
            return {k: batch[k] for k in PACKED_KEYS}
        inputs = {k: batch[k] for k in MODEL_KEYS}
        # the decoder reads the labels shifted right (the start token first, -100 back to pad), as the model does it
        inputs["decoder_input_ids"] = self.model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return inputs

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = outputs.logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1),
                               ignore_index=-100, label_smoothing=self.label_smoothing)

    def batch_size_of(self, batch: Mapping[str, Any]) -> int:
        return int(batch.get("num_sequences") or batch["input_ids"].shape[0])  # pairs, not padding-free rows

    # -- metrics -----------------------------------------------------------------------------
    def make_metrics(self) -> tm.MetricCollection:
        return tm.MetricCollection({"loss": tm.MeanMetric(), "text": GeneratedText(self.kind)})

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        metrics["loss"].update(loss, weight=int((batch["labels"] != -100).sum()))

    def _eval_step(self, batch: dict, stage: str) -> None:
        super()._eval_step(batch, stage)
        if not self._generating:
            return
        index = batch["index"]
        keep = torch.ones_like(index, dtype=torch.bool)
        if stage == "val" and self.generate_val_samples is not None:
            keep = index < self.generate_val_samples
        if not keep.any():
            return
        dataset = self._dataset(stage)
        idx = index[keep]
        hyps = generate_ids(self.trainable(), batch["input_ids"][keep], batch["attention_mask"][keep],
                            self._tokenizer(), self.generation)
        if self._shown is not None:
            self._shown.advance(len(hyps))
        refs = [dataset.reference(int(i)) for i in idx.tolist()]
        self.metrics[stage]["text"].update(idx, hyps, refs)

    def _dataset(self, stage: str) -> Any:
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0]
        return loaders.dataset

    def _tokenizer(self) -> Any:
        dm = self.trainer.datamodule
        if dm is None:  # eval.py hands the loader over without its datamodule: the loader's collate belongs to it
            loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            dm = getattr(loader.collate_fn, "__self__", None)
        if dm is None:
            raise ConfigError("seq2seq evaluation needs the datamodule's tokenizer to decode what it generates")
        return dm.tokenizer

    def on_validation_epoch_start(self) -> None:
        sanity = self.trainer.sanity_checking
        if not sanity:
            self._validations += 1
        self._generating = not sanity and (self._validations - 1) % self.generate_every_n_val == 0
        self._show_generation("validation")

    def on_test_epoch_start(self) -> None:
        self._generating = True
        self._show_generation("test")

    def _show_generation(self, split: str) -> None:
        """Time this loop's generation: one line at its end (rank 0; no bar: the loop's own bar shows it)."""
        from lmforge.utils.progress import Stage

        self._shown = Stage(f"generating {split} outputs", unit="samples", bar=False).start() if self._generating else None

    def _eval_epoch_end(self, stage: str) -> None:
        if self._shown is not None:
            self._shown.close()
            self._shown = None
        text = self.metrics[stage]["text"]
        super()._eval_epoch_end(stage)  # computes (gathering every rank's texts) and resets
        if stage == "val" and text.last and self.trainer.is_global_zero:
            self.log_generations(text.last[: self.log_samples], self._dataset(stage))

    def log_generations(self, rows: Sequence[tuple[int, str, str]], dataset: Any) -> None:
        from lmforge.loggers import log_table

        table = [[dataset.source(i), ref, hyp] for i, hyp, ref in rows]
        lines = [f"generated at step {self.global_step}:"]
        for src, ref, hyp in table:
            lines += [f"  source:     {_short(src)}", f"  reference:  {_short(ref)}", f"  prediction: {_short(hyp)}"]
        rank_zero_info("\n".join(lines))
        log_table(self.trainer, "generations", ["source", "reference", "prediction"], table)

    def write_eval_files(self, split: str, folder: Path) -> list[Path]:
        """``<folder>/<split>/predictions.jsonl`` (source, reference, prediction), ``hypotheses.txt`` and
        ``references.txt`` (one line per example, in order) of the split just tested; rank 0 writes."""
        rows = self.metrics["test"]["text"].last
        if self.trainer.global_rank != 0 or not rows:
            return []
        dataset = self._dataset("test")
        out = Path(folder) / split
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
            for i, hyp, ref in rows:
                f.write(json.dumps({"source": dataset.source(i), "reference": ref, "prediction": hyp},
                                   ensure_ascii=False) + "\n")
        (out / "hypotheses.txt").write_text("".join(one_line(h) + "\n" for _, h, _ in rows), encoding="utf-8")
        (out / "references.txt").write_text("".join(one_line(r) + "\n" for _, _, r in rows), encoding="utf-8")
        log.info("wrote %s/{predictions.jsonl,hypotheses.txt,references.txt} (%d examples)", out, len(rows))
        return [out / "predictions.jsonl", out / "hypotheses.txt", out / "references.txt"]

    # -- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: Sequence[Mapping[str, Any] | str], datamodule: Any, batch_size: int | None = None) -> list[dict]:
        records = as_records(inputs, datamodule.input_fields)
        examples = datamodule.encode_inputs(records)
        bs = int(batch_size or self.generation["batch_size"])
        out: list[str] = [""] * len(examples)
        from lmforge.utils.progress import stage

        # longest source first: a batch pads its sources little and its outputs, whose lengths follow the sources',
        # end at about the same step; the predictions go back in input order
        with stage("generating predictions", total=len(examples), unit="inputs") as shown, torch.inference_mode():
            for chunk in batched(length_order(examples), bs):
                batch = datamodule.collate([examples[i] for i in chunk])
                texts = generate_ids(self.trainable(), batch["input_ids"], batch["attention_mask"],
                                     datamodule.tokenizer, self.generation)
                for i, text in zip(chunk, texts):
                    out[i] = text
                shown.advance(len(chunk))
        return [{**r, "prediction": p} for r, p in zip(records, out)]

    def field_prediction_files(self, records: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
        path = Path(folder) / "hypotheses.txt"
        path.write_text("".join(one_line(str(r.get("prediction", ""))) + "\n" for r in records), encoding="utf-8")
        return [path]

    # -- serving -----------------------------------------------------------------------------
    @classmethod
    def serve(cls, export_folder: str | Path, inputs: Sequence[Mapping[str, Any] | str], **kwargs: Any) -> list[dict]:
        """Predictions from the export folder alone, with plain ``transformers`` (:class:`Seq2SeqPredictor`, what
        ``lmforge.load(<export>)`` builds): ``AutoModelForSeq2SeqLM``, ``AutoTokenizer`` and ``model.generate`` with
        the export's own ``generation_config.json``."""
        options = {k: kwargs[k] for k in ("device", "batch_size") if k in kwargs}  # the rest is the contract's
        return [{"prediction": p} for p in Seq2SeqPredictor(export_folder, **options).predict(inputs)]


class _NoTokenizer:
    pad_token_id = 0
    eos_token_id = 0


def one_line(text: str) -> str:
    """A text on one line (hypotheses.txt holds one output a line): newlines become spaces."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


def _short(text: str, n: int = 160) -> str:
    text = one_line(text)
    return text if len(text) <= n else text[: n - 3] + "..."
