"""The task contract: what every task's LightningModule provides, and the only things ``train()`` and
``evaluate()`` call on it.

A task module is a thin layer over one ``transformers`` Auto class. It provides:

* **model(s) from facts the data reports**: :meth:`TaskModule.build_model` gets the DataModule's
  ``model_facts()`` (label names, vocabulary size, pad id, ...) once, in ``configure_model``.
  :meth:`TaskModule.trainable` is the model that is optimized, checkpointed, sharded and exported;
  modules a wrapper adds beside it (a distillation teacher) are listed by :meth:`frozen_modules`
  and stay out of the optimizer, the checkpoint and the export.
* **the forward pass apart from the loss**: :meth:`forward` returns the model's outputs (logits, no
  loss); :meth:`loss` computes the task's loss from them, so a wrapper can add other losses;
* **metrics**: :meth:`make_metrics` (a ``MetricCollection`` per evaluation stage, synced across
  ranks) and :meth:`update_metrics`; ``<stage>/loss`` and every metric are logged at the end of
  each evaluation epoch, ``<stage>/score`` is the task's headline metric (:attr:`score_metric`);
* **prediction on raw inputs**: :meth:`predict` takes records with the DataModule's
  ``input_fields`` (a bare string fills the first) and returns records with the fields in
  :attr:`prediction_fields`; :meth:`write_predictions` writes ``predictions.jsonl`` and, where the
  field has one, its own file format beside it (:meth:`field_prediction_files`);
* **export and serving**: :meth:`export` writes a Hugging Face folder (model + tokenizer);
  :meth:`serve` predicts from that folder alone, the way a user outside lmforge does: through
  ``transformers.pipeline(pipeline_task)`` where transformers has that pipeline, else with the task's
  own small predictor over the export folder.

A capability a task lacks raises :class:`~lmforge.utils.errors.ConfigError` naming the task, never
an ``AttributeError``. The DataModule side of the contract is in :mod:`lmforge.data.datamodule`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch
import torchmetrics as tm
from omegaconf import DictConfig, ListConfig, OmegaConf

from lmforge.models.factory import build_model, parameter_counts
from lmforge.utils.errors import ConfigError

STAGES = ("val", "test")
log = logging.getLogger(__name__)


def _plain(cfg: Any) -> dict:
    """``cfg`` as plain dicts and lists all the way down (no OmegaConf containers inside)."""
    def plain(x: Any) -> Any:
        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
        if isinstance(x, Mapping):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(cfg) if cfg else {}


def lr_lambda(kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if kind not in ("linear", "cosine", "constant"):
        raise ConfigError(f"scheduler.name={kind}: expected linear, cosine or constant")

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay

    return f


def resolve_warmup(warmup: float | int, total_steps: int) -> int:
    """``warmup`` below 1 is a fraction of the optimizer steps; 1 or more is a step count."""
    if warmup < 0:
        raise ConfigError(f"scheduler.warmup={warmup}: expected a step count >= 1 or a fraction in [0, 1)")
    return int(round(warmup * total_steps)) if warmup < 1 else int(warmup)


def build_optimizer(params: Sequence[tuple[str, torch.nn.Parameter]], cfg: Mapping, sharded: bool = False
                    ) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names (``_target_``: any ``torch.optim`` class or a callable taking
    ``params`` first), over the given trainable parameters, in two groups: weight decay on matrices,
    none on biases and norm weights (1-D), as BERT, GPT-2 and most recipes do."""
    import hydra

    cfg = dict(cfg)
    target = cfg.pop("_target_", None)
    cfg.pop("_partial_", None)
    if target is None:
        raise ConfigError("optimizer._target_ is not set: name a torch.optim class, e.g. optimizer=adamw "
                          "or optimizer._target_=torch.optim.SGD")
    weight_decay = float(cfg.pop("weight_decay", 0.0) or 0.0)
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if "betas" in cfg and cfg["betas"] is not None:
        cfg["betas"] = tuple(cfg["betas"])
    if "fused" in cfg and cfg["fused"] is None:
        # fused Adam(W) is ~2.7x cheaper on CPU and GPU (benchmarks/); not for DTensors (FSDP2) or MPS
        flat = decay + no_decay
        cfg["fused"] = bool(flat) and not sharded and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in flat)
    try:
        cls = hydra.utils.get_method(target) if not isinstance(target, type) else target
    except Exception as e:
        raise ConfigError(f"optimizer._target_={target}: cannot import it ({e})") from None
    import inspect

    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    if accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        # keys another optimizer's config brought along (a task's defaults set AdamW's betas): said once, dropped
        ignored = sorted(k for k in cfg if k not in accepted)
        if ignored:
            log.warning("optimizer %s takes no %s: ignored", target, ", ".join(ignored))
        cfg = {k: v for k, v in cfg.items() if k in accepted}
    try:
        return cls(groups, **cfg)
    except TypeError as e:
        raise ConfigError(f"optimizer={target} does not take these settings: {e}; "
                          f"set them to null or remove them (optimizer.<key>)") from None


class TaskModule(L.LightningModule):
    """Base of every task module (see the module docstring for the contract).

    Subclasses set :attr:`auto_cls`, :attr:`pipeline_task`, :attr:`prediction_fields`,
    :attr:`score_metric`, and implement :meth:`loss`, :meth:`make_metrics`, :meth:`update_metrics`
    and :meth:`predict_batch` (or :meth:`predict`). One level of inheritance: tasks derive from this
    class only.
    """

    auto_cls: Any = None
    #: the ``transformers.pipeline`` task that serves the export (None: the task's own predictor)
    pipeline_task: str | None = None
    #: fields of a prediction record (besides the input fields it echoes)
    prediction_fields: tuple[str, ...] = ()
    #: the metric logged again as ``<stage>/score`` (None: no headline score)
    score_metric: str | None = None

    def __init__(self, model: Mapping, optimizer: Mapping, scheduler: Mapping, seed: int = 0,
                 sharding: Mapping | None = None, facts: Mapping | None = None):
        """``model``/``optimizer``/``scheduler``: their config nodes. ``seed``: initial weights depend on it
        only. ``sharding``: FSDP2 options when the strategy shards (``reshard_after_forward``,
        ``activation_checkpointing``). ``facts``: model facts read back from a checkpoint (eval.py);
        otherwise they come from the DataModule at ``configure_model``."""
        super().__init__()
        self.model_cfg = _plain(model)
        self.optimizer_cfg = _plain(optimizer)
        self.scheduler_cfg = _plain(scheduler)
        # plain containers, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters({"model": self.model_cfg, "optimizer": self.optimizer_cfg,
                                   "scheduler": self.scheduler_cfg})
        self.init_seed = int(seed)
        self.sharding = _plain(sharding)
        # plain containers (Hydra hands dict arguments over as DictConfig): checkpoints load with weights_only=True
        self.facts = _plain(facts) if facts else None
        self.model: torch.nn.Module | None = None
        self.metrics: torch.nn.ModuleDict | None = None
        # evaluation stage -> metric prefix; eval.py evaluates any split through the test loop
        self.stage_prefix = {"val": "val", "test": "test"}
        # where the test loop writes the task's evaluation files (train(): the run dir; eval.py: its output dir)
        self.eval_output_dir: Path | None = None
        # trainer.compile: torch.compile options for the trainable model (see compile_options), None: eager
        self.compile_options: dict | None = None

    # -- model(s) ----------------------------------------------------------------------------
    def model_facts(self) -> dict:
        """Facts for the HF config: the checkpoint's (eval.py), else what the attached DataModule reports."""
        if self.facts:
            return dict(self.facts)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            raise ConfigError("the model is built from facts the data reports: attach a DataModule (or pass facts=)")
        return dm.model_facts()

    def build_model(self, facts: Mapping) -> torch.nn.Module:
        """The task's model from its config and the data's facts (a pretrained checkpoint or a size preset)."""
        return build_model(self.auto_cls, self.model_cfg, **facts)

    def trainable(self) -> torch.nn.Module:
        """The model that is optimized, checkpointed, sharded and exported."""
        assert self.model is not None, "configure_model() has not run"
        return self.model

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        """Attribute name -> module that is used but never trained, saved or exported (a distillation teacher)."""
        return {}

    def configure_model(self) -> None:
        if self.model is None:
            # initial weights depend on the seed only, not on how much randomness the strategy's setup used
            # (DDP/FSDP re-seed the global RNG during setup, a single process does not)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                self.model = self.build_model(self.model_facts())
            self.model.train()  # from_pretrained returns eval mode; Lightning switches modes per loop
            if self.model_cfg.get("gradient_checkpointing") or self.sharding.get("activation_checkpointing"):
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.device_mesh is not None:  # ModelParallelStrategy (strategy=fsdp): FSDP2 per block
                from lmforge.strategies import fully_shard_model

                fully_shard_model(self.trainable(), self.device_mesh,
                                  reshard_after_forward=self.sharding.get("reshard_after_forward", True))
            if self.compile_options:
                # in place (nn.Module.compile): the module and its state_dict keys stay the same (no `_orig_mod.`),
                # so checkpoints and the export are those of an eager run; DDP/FSDP wrap the compiled module
                self.trainable().compile(**self.compile_options)
            self.model_built()
        if self.metrics is None:
            self.metrics = torch.nn.ModuleDict({s: self.make_metrics() for s in STAGES})

    def model_built(self) -> None:
        """Called once, when configure_model has built (and sharded or compiled) the model: where a task tells its
        attached DataModule what the model allows (padding-free batches)."""

    def attached_datamodule(self) -> Any:
        """The DataModule of the Trainer this module is attached to, or None (eval.py, a bare module)."""
        return self.trainer.datamodule if self._trainer is not None else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_facts"] = _plain(self.model_facts())

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        frozen = tuple(f"{prefix}{name}." for name in self.frozen_modules())
        return type(state)((k, v) for k, v in state.items() if not (frozen and k.startswith(frozen))) \
            if frozen else state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        frozen = tuple(f"{name}." for name in self.frozen_modules())
        if frozen:  # the checkpoint holds the trainable model only; frozen modules keep what they were built with
            own = {k: v for k, v in super().state_dict().items() if k.startswith(frozen)}
            state_dict = {**own, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self.trainable())

    # -- forward and loss --------------------------------------------------------------------
    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch fields the model takes (everything but the targets)."""
        return {k: v for k, v in batch.items() if k != "labels"}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        """The model's outputs for a batch, without a loss."""
        return self.model(**self.model_inputs(batch))

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The task's loss from the outputs of :meth:`forward` and the batch's targets."""
        raise NotImplementedError

    def batch_size_of(self, batch: Mapping[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch)
        # not prog_bar: Lightning turns progress-bar values into numbers after every batch (a host sync per
        # step); the progress line reads train/loss from callback_metrics only when it prints
        self.log("train/loss", loss, batch_size=self.batch_size_of(batch))
        return loss

    # -- metrics -----------------------------------------------------------------------------
    def make_metrics(self) -> tm.MetricCollection:
        """One evaluation stage's metrics (``loss`` among them), logged as ``<stage>/<name>`` at epoch end."""
        return tm.MetricCollection({})

    def update_metrics(self, metrics: tm.MetricCollection, outputs: Any, batch: Mapping[str, torch.Tensor],
                       loss: torch.Tensor) -> None:
        raise NotImplementedError

    def _eval_step(self, batch: dict, stage: str) -> None:
        outputs = self(batch)
        self.update_metrics(self.metrics[stage], outputs, batch, self.loss(outputs, batch).detach())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        metrics = self.metrics[stage]
        values = {k: v for k, v in metrics.compute().items()}
        metrics.reset()
        prefix = self.stage_prefix[stage]
        logged = {f"{prefix}/{k}": loggable(v) for k, v in values.items()}
        if self.score_metric is not None and self.score_metric in values:
            logged[f"{prefix}/score"] = values[self.score_metric]
        # the values are already synced by torchmetrics (every rank holds the same): no sync_dist (Lightning's
        # per-metric DDP warning about it is expected)
        self.log_dict(logged, prog_bar=stage == "val")
        if stage == "test" and self.eval_output_dir is not None:
            self.write_eval_files(prefix, Path(self.eval_output_dir))

    def write_eval_files(self, split: str, folder: Path) -> list[Path]:
        """Files in the field's own format for an evaluated split with gold labels (NER: ``predictions.conll``
        that ``conlleval`` reads; QA: the official ``predictions.json``). Called on every rank at the end of
        the test loop (gather across ranks here, write on rank 0); none by default."""
        return []

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- optimization ------------------------------------------------------------------------
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The optimizer step, then the gradients dropped at once (``set_to_none``).

        Lightning clears gradients inside the step's closure, after the forward pass and before the backward:
        the previous step's gradients (one float per parameter, 86 MiB for MiniLM) stay alive through the next
        forward pass, when the activations are at their largest. Measured on MiniLM question-answering windows
        (batch 16 x 384 tokens, CPU), that raised the step's peak resident memory by 110-450 MiB, more than the
        gradients' own size (the allocator's heap fragments around them); the Trainer drops them after the step
        too. Dropped here, the closure's own clearing finds nothing to clear; with gradient accumulation this runs
        only after the step that ends an accumulation cycle."""
        optimizer.step(closure=optimizer_closure)
        if "deepspeed" not in type(self.trainer.strategy).__name__.lower():  # DeepSpeed clears its own (flat) buffers
            optimizer.zero_grad(set_to_none=True)

    def configure_optimizers(self):
        from lmforge.strategies import is_sharded

        model = self.trainable()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        cfg = dict(self.optimizer_cfg)
        if cfg.get("fused", None) is None and "fused" in cfg and self._trainer is not None \
                and getattr(self.trainer.precision_plugin, "scaler", None) is not None \
                and (self.trainer.gradient_clip_val or 0) > 0:
            # 16-mixed scales the loss: a fused optimizer unscales inside its step, after clipping would have
            # seen scaled gradients, so Lightning refuses the pair; the auto choice is the unfused optimizer
            cfg["fused"] = False
        optimizer = build_optimizer(params, cfg, sharded=is_sharded(model))
        sch = self.scheduler_cfg
        # the schedule's length: the run's own optimizer steps, unless set (a run that will be continued)
        total = int(sch.get("total_steps") or self.trainer.estimated_stepping_batches)
        warmup = resolve_warmup(sch.get("warmup", 0), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(sch.get("name", "linear"), warmup, total, sch.get("min_lr_ratio", 0.0)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        from lightning.pytorch.plugins.precision import MixedPrecision, Precision

        plugin = self.trainer.precision_plugin
        if type(plugin) is MixedPrecision and plugin.scaler is None and gradient_clip_val:
            # bf16-mixed has no loss scaler, so a fused optimizer has nothing to unscale and its gradients clip
            # as in 32-bit; Lightning's MixedPrecision refuses fused optimizers whatever the dtype: clip here
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- prediction --------------------------------------------------------------------------
    def predict_batch(self, batch: Mapping[str, torch.Tensor], datamodule: Any) -> list[dict]:
        """One record (the :attr:`prediction_fields`) per example of a collated batch."""
        raise ConfigError(f"task {type(self).__name__} does not predict on raw inputs")

    #: ``predict.precision`` (auto | 32 | bf16) for calls of :meth:`predict` that pass none; ``eval.py`` sets it from
    #: its config. The library default stays exact 32-bit.
    predict_precision: str = "32"

    def prediction_precision(self, precision: str | None = None) -> str:
        """``"32"`` or ``"bf16"``: ``precision`` (else :attr:`predict_precision`) with ``auto`` decided for this
        module's device (:func:`lmforge.serving.resolve_precision`)."""
        from lmforge.serving import resolve_precision

        return resolve_precision(self.predict_precision if precision is None else precision, self.device)

    def predict(self, inputs: Sequence[Mapping[str, Any] | str], datamodule: Any, batch_size: int = 64,
                precision: str | None = None) -> list[dict]:
        """Records for raw inputs, in the inputs' order: each input's fields followed by the prediction's.

        The encoded inputs run longest first in batches of ``batch_size`` (similar lengths share a batch, so
        little padding) under ``torch.inference_mode``, and under bfloat16 autocast when ``precision`` (else
        :attr:`predict_precision`) is ``bf16``, or ``auto`` on hardware where that is faster;
        :attr:`predict_stats` holds texts/s and the precision used afterwards."""
        from lmforge.serving import precision_context

        precision = self.prediction_precision(precision)
        records = as_records(inputs, datamodule.input_fields)
        start_time = time.perf_counter()
        examples = datamodule.encode_inputs(records)
        order = length_order(examples)
        was_training = self.training
        self.eval()
        out: list[dict | None] = [None] * len(examples)
        try:
            with torch.inference_mode(), precision_context(precision, self.device):
                for chunk in batched(order, batch_size):
                    batch = datamodule.collate([examples[i] for i in chunk])
                    batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    for i, p in zip(chunk, self.predict_batch(batch, datamodule)):
                        out[i] = p
        finally:
            self.train(was_training)
        self.predict_stats = predict_stats(len(records), time.perf_counter() - start_time, batch_size, precision)
        self.predict_order = order
        return [{**r, **(p or {})} for r, p in zip(records, out)]

    def write_predictions(self, records: Sequence[Mapping[str, Any]], path: str | Path) -> list[Path]:
        """``path`` (JSON lines, strict JSON: NaN and infinities become null) and, beside it, the field's own
        format (:meth:`field_prediction_files`); returns the files written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(strict_json(r), ensure_ascii=False, allow_nan=False) + "\n")
        return [path, *self.field_prediction_files(records, path.parent)]

    def field_prediction_files(self, records: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
        """Prediction files in the field's own format (none by default)."""
        return []

    # -- export and serving ------------------------------------------------------------------
    def export(self, folder: str | Path, tokenizer: Any = None, state_dict: dict | None = None) -> Path:
        """The trainable model (+ tokenizer) in Hugging Face format, weights as safetensors."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.trainable().save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return folder

    @classmethod
    def serve(cls, export_folder: str | Path, inputs: Sequence[Mapping[str, Any] | str], **kwargs: Any) -> list[dict]:
        """Predict from an export folder alone, as a user without lmforge would (``transformers.pipeline``)."""
        if cls.pipeline_task is None:
            raise ConfigError(f"task {cls.__name__} declares no way to serve its export")
        from transformers import pipeline

        pipe = pipeline(cls.pipeline_task, model=str(export_folder), device="cpu")
        return cls.records_from_pipeline(pipe, inputs, **kwargs)

    @classmethod
    def records_from_pipeline(cls, pipe: Any, inputs: Sequence[Mapping[str, Any] | str], **kwargs: Any) -> list[dict]:
        raise NotImplementedError


def loggable(value: Any) -> Any:
    """A metric value as Lightning reduces it without a warning: integer tensors become float32 (torchmetrics'
    ``MatthewsCorrCoef`` returns ``tensor(1)``, an int64, for perfect predictions, and Lightning then warns that
    ``val/mcc`` "needs to be floating" in the middle of the first command's output)."""
    if isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex()):
        return value.float()
    return value


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(trainer_cfg: Mapping | None) -> dict | None:
    """``torch.compile`` keyword arguments from ``trainer.compile`` (true/false, default false) and
    ``trainer.compile_mode`` (null: torch's default); None when off. Raises ConfigError for other values and,
    on a CPU, when no C++ compiler is found (``$CXX``, ``c++``, ``g++`` or ``clang++``): inductor needs one."""
    trainer_cfg = trainer_cfg or {}
    value = trainer_cfg.get("compile", False)
    flag = str(value).lower()
    if value is None or flag in ("false", "0", "off", "no"):
        return None
    if flag not in ("true", "1", "on", "yes"):
        raise ConfigError(f"trainer.compile={value}: expected true or false")
    mode = trainer_cfg.get("compile_mode")
    if mode is not None and str(mode) not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile_mode={mode}: expected null or one of {', '.join(COMPILE_MODES)}")
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu:
        import os
        import shutil

        compilers = [c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c]
        if not any(shutil.which(c) for c in compilers):
            raise ConfigError("trainer.compile=true: torch.compile on a CPU builds C++ kernels and no C++ compiler "
                              "was found (looked for $CXX, c++, g++, clang++); install one (e.g. apt-get install "
                              "g++) or set trainer.compile=false")
    return {"mode": None if mode is None else str(mode)}


def batched(items: Sequence[int], size: int) -> list[list[int]]:
    """``items`` in consecutive chunks of ``size`` (the last one shorter)."""
    if int(size) < 1:
        raise ConfigError(f"predict.batch_size={size}: expected a whole number >= 1")
    return [list(items[i: i + int(size)]) for i in range(0, len(items), int(size))]


def example_length(example: Mapping[str, Any]) -> int:
    """Tokens of an encoded input (all windows of a question-answering input)."""
    if "windows" in example:
        return sum(example_length(w) for w in example["windows"])
    ids = example.get("input_ids")
    return len(ids) if ids is not None and hasattr(ids, "__len__") else 0


def length_order(examples: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of ``examples``, longest first (ties keep their input order)."""
    lengths = [example_length(e) for e in examples]
    return sorted(range(len(examples)), key=lambda i: -lengths[i])


def predict_stats(n: int, seconds: float, batch_size: int, precision: str = "32") -> dict[str, Any]:
    """Prediction throughput (encoding included): inputs, seconds, texts/s, batch size, precision (32 or bf16)."""
    from lmforge.serving import precision_note

    seconds = max(seconds, 1e-9)
    stats = {"texts": n, "seconds": round(seconds, 4), "texts_per_sec": round(n / seconds, 2), "batch_size": batch_size,
             "precision": precision}
    log.info("predicted %d inputs in %.2f s (%.1f texts/s, batch %d, longest first, %s)", n, seconds, n / seconds,
             batch_size, precision_note(precision))
    return stats


def as_records(inputs: Sequence[Mapping[str, Any] | str], fields: Sequence[str]) -> list[dict]:
    """Prediction inputs as records: a bare string fills the first input field."""
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            out.append({fields[0]: x})
        elif isinstance(x, Mapping):
            missing = [f for f in fields[:1] if f not in x]
            if missing:
                raise ConfigError(f"prediction input {i + 1}: {dict(x)!r} has no {missing[0]!r}; expected fields "
                                  f"{', '.join(fields)}")
            out.append(dict(x))
        else:
            raise ConfigError(f"prediction input {i + 1}: {x!r} is neither a text nor a record")
    return out


def strict_json(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and tensors/numpy scalars as plain numbers, for strict JSON readers."""
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
