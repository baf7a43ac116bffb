"""Sentence embeddings: a bi-encoder over ``AutoModel`` that sentence-transformers can load.

One shared encoder reads each text on its own; :func:`~.losses.pool` turns its token states into one
vector (``task.pooling=mean|cls|max``, padding excluded), optionally L2-normalised
(``task.normalize``). The objective is the one the data chose (:mod:`.data`): cosine regression or
CoSENT on scored pairs, in-batch negatives (MNRL / InfoNCE, ``task.temperature``; gathered from all
ranks under DDP) on unscored pairs, or the triplet loss.

Metrics (:mod:`.metrics`): scored pairs log ``pearson`` and ``spearman`` of cosine against gold as
sentence-transformers' ``EmbeddingSimilarityEvaluator`` computes them (``<stage>/score`` is
Spearman); unscored pairs log ``accuracy_at_1`` and ``mrr_at_10`` of each anchor against every
positive of the split (``<stage>/score`` is MRR@10).

Prediction: a text gives its embedding (``embeddings.npy`` beside ``predictions.jsonl``, row i for
record i; the jsonl holds the text and the vector's ``norm``); a record with ``text`` and
``text_pair`` gives their ``cosine``. :meth:`SentenceEmbeddingModule.search` ranks a corpus per query.

Export: the Hugging Face folder (model + tokenizer) plus the sentence-transformers files
(``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json``, ``2_Normalize/`` when
normalised), so ``SentenceTransformer(<export>)`` and ``AutoModel`` both load it; :meth:`serve`
encodes from that folder alone with plain ``transformers``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics as tm
from transformers import AutoModel

from lmforge.models.factory import build_model
from lmforge.tasks.base import TaskModule
from lmforge.tasks.sentence_embedding.losses import (POOLING, cosent_loss, cosine_loss, mnrl_loss, pool,
                                                     triplet_loss)
from lmforge.tasks.sentence_embedding.metrics import PairRetrieval, SimilarityCorrelation
from lmforge.utils.errors import ConfigError

HF_FACTS = ("vocab_size", "pad_token_id")
ROLES = (("a", ""), ("b", "pair_"), ("n", "neg_"))


class SentenceEmbeddingModule(TaskModule):
    auto_cls = AutoModel
    pipeline_task = None  # served by serve() below: AutoModel + the exported pooling, no lmforge code
    prediction_fields = ("norm",)

    def __init__(self, *args: Any, pooling: str = "mean", normalize: bool = False, temperature: float = 0.05,
                 cosent_scale: float = 20.0, triplet_margin: float = 5.0, gather_negatives: bool = True,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if pooling not in POOLING:
            raise ConfigError(f"task.pooling={pooling}: expected one of {', '.join(POOLING)}")
        if temperature <= 0:
            raise ConfigError(f"task.temperature={temperature}: expected a positive number (0.05 is usual)")
        self.pooling, self.normalize = pooling, bool(normalize)
        self.temperature, self.cosent_scale, self.triplet_margin = temperature, cosent_scale, triplet_margin
        self.gather_negatives = bool(gather_negatives)
        self._embeddings: list[np.ndarray] = []

    # -- model -------------------------------------------------------------------------------
    def build_model(self, facts: Mapping) -> torch.nn.Module:
        model = build_model(self.auto_cls, self.model_cfg, **{k: v for k, v in facts.items() if k in HF_FACTS})
        for name, p in model.named_parameters():
            if name.startswith("pooler."):  # BERT's [CLS] pooler is not used by the bi-encoder (and DDP would wait for it)
                p.requires_grad_(False)
        return model

    @property
    def objective(self) -> str:
        return self.model_facts()["objective"]

    @property
    def scored(self) -> bool:
        return bool(self.model_facts()["scored"])

    @property
    def score_metric(self) -> str:  # type: ignore[override]
        return "spearman" if self.scored else "mrr_at_10"

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"a": anchors, "b": pairs, "n": negatives}``: the embeddings of each text field the batch has."""
        return {role: self.encode(batch[f"{p}input_ids"], batch[f"{p}attention_mask"])
                for role, p in ROLES if f"{p}input_ids" in batch}

    def loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a, b, n = outputs["a"], outputs["b"], outputs.get("n")
        obj = self.objective
        if obj == "cosine":
            return cosine_loss(a, b, batch["labels"])
        if obj == "cosent":
            return cosent_loss(a, b, batch["labels"], self.cosent_scale)
        if obj == "mnrl":  # gathered across ranks in training only (evaluation batches may differ in size)
            return mnrl_loss(a, b, n, self.temperature, gather=self.gather_negatives and self.training)
        if obj == "triplet":
            return triplet_loss(a, b, n, self.triplet_margin)
        raise ConfigError(f"task.loss={obj}: expected cosine, cosent, mnrl or triplet")

    # -- metrics -----------------------------------------------------------------------------
    def make_metrics(self) -> tm.MetricCollection:
        main = {"similarity": SimilarityCorrelation()} if self.scored else {"retrieval": PairRetrieval(k=10)}
        return tm.MetricCollection({**main, "loss": tm.MeanMetric()}, compute_groups=False)

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        for name, metric in metrics.items():
            if name == "loss":
                metric.update(loss, weight=outputs["a"].shape[0])
            elif name == "similarity":
                metric.update(outputs["a"], outputs["b"], batch["labels"])
            else:
                metric.update(outputs["a"], outputs["b"])

    # -- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: Sequence[Mapping[str, Any] | str], datamodule: Any, batch_size: int = 64) -> list[dict]:
        self._embeddings = []
        records = super().predict(inputs, datamodule, batch_size)
        if len(self._embeddings) == len(self.predict_order):  # computed longest first: back to the inputs' order
            ordered: list = [None] * len(self._embeddings)
            for pos, i in enumerate(self.predict_order):
                ordered[i] = self._embeddings[pos]
            self._embeddings = ordered
        return records

    def predict_batch(self, batch: Mapping[str, torch.Tensor], datamodule: Any) -> list[dict]:
        out = {k: v.float().cpu() for k, v in self(batch).items()}
        if "b" in out:
            return pair_records(out["a"], out["b"])
        self._embeddings.extend(out["a"].numpy())
        return text_records(out["a"])

    def field_prediction_files(self, records: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
        if not self._embeddings or len(self._embeddings) != len(records):
            return []
        path = folder / "embeddings.npy"
        np.save(path, np.stack(self._embeddings).astype(np.float32))
        return [path]

    @torch.no_grad()
    def embed(self, texts: Sequence[str], datamodule: Any, batch_size: int = 64) -> torch.Tensor:
        """Embeddings of ``texts`` (rows in order), on the CPU."""
        self.predict(list(texts), datamodule, batch_size)
        return torch.from_numpy(np.stack(self._embeddings))

    def search(self, queries: Sequence[str], corpus: Sequence[str], datamodule: Any, k: int = 5) -> list[dict]:
        """The ``k`` corpus texts closest (cosine) to each query: ``{"query", "hits": [{"text", "cosine"}]}``."""
        q = F.normalize(self.embed(queries, datamodule), dim=-1)
        c = F.normalize(self.embed(corpus, datamodule), dim=-1)
        top = (q @ c.T).topk(min(k, len(corpus)), dim=1)
        return [{"query": query, "hits": [{"text": corpus[int(j)], "cosine": float(s)} for s, j in zip(ss, jj)]}
                for query, ss, jj in zip(queries, top.values, top.indices)]

    # -- export and serving ------------------------------------------------------------------
    def export(self, folder: str | Path, tokenizer: Any = None, state_dict: dict | None = None) -> Path:
        folder = super().export(folder, tokenizer=tokenizer, state_dict=state_dict)
        write_sentence_transformers_files(folder, self.trainable().config.hidden_size, self.pooling, self.normalize,
                                          int(self.model_facts().get("max_length") or 128))
        return folder

    @classmethod
    def serve(cls, export_folder: str | Path, inputs: Sequence[Mapping[str, Any] | str], **kwargs: Any) -> list[dict]:
        """Records for ``inputs`` from the export folder alone (AutoModel + AutoTokenizer + its pooling files);
        task options in ``kwargs`` are ignored: the folder says how it pools."""
        return ExportEncoder(export_folder).records(inputs)


def text_records(emb: torch.Tensor) -> list[dict]:
    return [{"norm": float(n)} for n in emb.norm(dim=-1)]


def pair_records(a: torch.Tensor, b: torch.Tensor) -> list[dict]:
    cos = F.cosine_similarity(a, b, dim=-1)
    return [{"cosine": float(c), "norm": float(na), "norm_pair": float(nb)}
            for c, na, nb in zip(cos, a.norm(dim=-1), b.norm(dim=-1))]


def write_sentence_transformers_files(folder: Path, width: int, pooling: str, normalize: bool,
                                      max_seq_length: int) -> None:
    """``modules.json`` (Transformer at the root, Pooling, Normalize when used), ``sentence_bert_config.json``
    and ``1_Pooling/config.json``, as sentence-transformers writes them."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                   "do_lower_case": False}, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))


class ExportEncoder:
    """Encodes texts with an exported folder (or any sentence-transformers folder with a root Transformer),
    using only ``transformers``: the tokenizer, ``AutoModel``, and the pooling the folder declares."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else \
            "max" if pooling.get("pooling_mode_max_tokens") else "mean"
        modules = json.loads((folder / "modules.json").read_text())
        self.normalize = any(m["type"].endswith("Normalize") for m in modules)
        self.max_length = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[start: start + batch_size]), truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            emb = pool(hidden, enc["attention_mask"], self.pooling)
            out.append(F.normalize(emb, dim=-1) if self.normalize else emb)
        return torch.cat(out).float()

    def records(self, inputs: Sequence[Mapping[str, Any] | str]) -> list[dict]:
        recs = [{"text": x} if isinstance(x, str) else dict(x) for x in inputs]
        if recs and all(r.get("text_pair") for r in recs):
            return pair_records(self.encode([r["text"] for r in recs]), self.encode([r["text_pair"] for r in recs]))
        return text_records(self.encode([r["text"] for r in recs]))
