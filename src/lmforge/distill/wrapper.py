"""Knowledge distillation around any task module: the task's module is the student, a frozen teacher is added.

:func:`distill` turns a built task module into its distilled variant: the same object, its class a subclass
of the task's class with :class:`DistillMixin` in front. So the task keeps everything it owns (datamodule,
metrics, evaluation, predictions, checkpoint keys, export) and the mixin only changes

* the model build: the teacher is loaded beside the student (``frozen_modules``: outside the optimizer,
  the checkpoint and the export; eval mode, no gradients, sharded like the student under FSDP2); with
  ``distill.student.init=teacher_layers`` the student is a copy of the teacher with fewer layers;
* the training step: the task's loss plus weighted distillation losses (:mod:`lmforge.distill.losses`),
  the teacher's forward pass under ``torch.no_grad`` (autocast and precision are the run's: the teacher is
  a submodule of the module Lightning runs); optionally on unlabelled transfer texts too;
* the optimizer: learned projections for the hidden-state loss (widths differ) join it; they are in the
  checkpoint (so a run resumes) but not in the export, and ``eval.py`` drops them.
"""

from __future__ import annotations

import logging
import random
import types
import warnings
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from lmforge.distill import losses as L_
from lmforge.distill.cache import TeacherCache, example_keys, stack
from lmforge.distill.teacher import (attention_heads, check_compatible, is_causal, layer_list, load_teacher,
                                     model_width, qkv_modules, resolve_teacher, student_layers)
from lmforge.tasks.base import _plain
from lmforge.utils.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHTS = ("task", "kd", "hidden", "attention", "value")
TEACHER_LOSSES = ("kd", "hidden", "attention", "value")
PROJ = "distill_proj"  # attribute of the learned projections (checkpointed, never exported)


def settings(cfg: Mapping) -> dict:
    """``cfg.distill`` checked, with defaults filled in."""
    cfg = _plain(cfg)
    weights = {k: 0.0 for k in WEIGHTS}
    unknown = set(cfg.get("weights") or {}) - set(WEIGHTS)
    if unknown:
        raise ConfigError(f"distill.weights.{sorted(unknown)[0]}: unknown loss; expected {', '.join(WEIGHTS)}")
    weights.update({k: float(v) for k, v in (cfg.get("weights") or {}).items()})
    student = {"init": None, "layers": None, "every": None, **(cfg.get("student") or {})}
    if student["init"] not in (None, "teacher_layers"):
        raise ConfigError(f"distill.student.init={student['init']}: expected null (the task's model config) "
                          "or teacher_layers")
    out = {"teacher": cfg.get("teacher"), "temperature": float(cfg.get("temperature", 2.0)), "weights": weights,
           "hidden": {"loss": "mse", "layer_map": None, **(cfg.get("hidden") or {})},
           "minilm": {"relation_heads": None, **(cfg.get("minilm") or {})},
           "embedding_loss": cfg.get("embedding_loss", "mse"), "student": student,
           "cache_teacher": bool(cfg.get("cache_teacher", False)),
           "cache_max_items": int(cfg.get("cache_max_items") or 1_000_000),
           "transfer_file": cfg.get("transfer_file"), "transfer_batch_size": cfg.get("transfer_batch_size")}
    if out["temperature"] <= 0:
        raise ConfigError(f"distill.temperature={out['temperature']}: expected a positive number")
    if out["cache_teacher"] and any(weights[k] for k in ("hidden", "attention", "value")):
        raise ConfigError("distill.cache_teacher=true caches the teacher's outputs (logits) only: set "
                          "distill.weights.hidden/attention/value to 0, or cache_teacher=false")
    if not any(weights.values()):
        raise ConfigError("distill.weights: every loss weight is 0; nothing would train")
    return out


# -- the distilled class of a task -----------------------------------------------------------

def distilled_class(task_cls: type) -> type:
    """``task_cls`` with :class:`DistillMixin` in front, named so that pickle finds it again (ddp_spawn)."""
    if issubclass(task_cls, DistillMixin):
        return task_cls
    name = f"Distilled__{task_cls.__module__.replace('.', '__')}___{task_cls.__name__}"
    cls = _CLASSES.get(name)
    if cls is None:
        cls = type(name, (DistillMixin, task_cls), {"__module__": __name__, "__qualname__": name})
        _CLASSES[name] = cls
    return cls


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:  # pickle (ddp_spawn children) looks distilled classes up here
    if name.startswith("Distilled__") and "___" in name:
        mod, cls_name = name[len("Distilled__"):].rsplit("___", 1)
        import importlib

        return distilled_class(getattr(importlib.import_module(mod.replace("__", ".")), cls_name))
    raise AttributeError(name)


def _quiet_eval_mode_warning() -> None:
    """The frozen teacher is meant to be in eval mode when training starts: no Lightning warning about it."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def distill(module: nn.Module, cfg: Mapping, trust_remote_code: bool = False) -> nn.Module:
    """The task module ``module`` (not yet configured) as a distilled student, per ``cfg`` (``cfg.distill``)."""
    if getattr(module, "model", None) is not None:
        raise ConfigError("distill: wrap the task module before its model is built (configure_model)")
    s = settings(cfg)
    _quiet_eval_mode_warning()
    module.__class__ = distilled_class(type(module))
    module.distill_settings = s
    module.distill_trust_remote_code = bool(trust_remote_code)
    module.teacher_source = resolve_teacher(s["teacher"])
    module.teacher = None
    setattr(module, PROJ, None)
    module.layer_map = None
    module.teacher_cache = TeacherCache(s["cache_max_items"]) if s["cache_teacher"] else None
    module._distill_extra = {}
    module._transfer = None
    return module


def student_model_cfg(model_cfg: Mapping, teacher_source: str, n_layers: int) -> dict:
    """The model config of a student made of ``n_layers`` of the teacher: the teacher's architecture, fewer layers
    (its weights are copied from the teacher after it is built)."""
    cfg = _plain(model_cfg)
    overrides = {**(cfg.get("config_overrides") or {}), "num_hidden_layers": int(n_layers)}
    return {**cfg, "name_or_path": teacher_source, "pretrained": False, "config_overrides": overrides}


def copy_teacher_layers(student: nn.Module, teacher: nn.Module, layers: list[int]) -> None:
    """Embeddings, the chosen layers (student layer i <- teacher layer ``layers[i]``) and the head, from the teacher."""
    name, _ = layer_list(teacher)
    prefix = f"{name}."
    t_state = teacher.state_dict()
    new = {}
    for key, value in student.state_dict().items():
        src = key
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            src = f"{prefix}{layers[int(idx)]}.{rest}"
        if src not in t_state or t_state[src].shape != value.shape:
            raise ConfigError(f"distill.student.init=teacher_layers: the teacher has no {src} of shape "
                              f"{tuple(value.shape)} for the student's {key}")
        new[key] = t_state[src]
    student.load_state_dict(new, strict=True)


class DistillMixin:
    """Distillation behaviour in front of a task module's class (see the module docstring)."""

    distill_settings: dict
    teacher: nn.Module | None

    # -- models ------------------------------------------------------------------------------
    def frozen_modules(self) -> dict[str, nn.Module]:
        t = self._modules.get("teacher")
        return {"teacher": t} if t is not None else {}

    def build_model(self, facts: Mapping) -> nn.Module:
        s = self.distill_settings
        teacher = load_teacher(type(self).auto_cls, self.teacher_source, self.distill_trust_remote_code)
        init = s["student"]
        if init["init"] == "teacher_layers":
            name, stack_ = layer_list(teacher)
            layers = student_layers(len(stack_), init["layers"], init["every"])
            full_cfg = self.model_cfg
            self.model_cfg = student_model_cfg(full_cfg, self.teacher_source, len(layers))
            try:
                student = super().build_model(facts)  # the task's own build (heads, generation config, ...)
            finally:
                self.model_cfg = full_cfg
            check_compatible(student.config, teacher.config, self.teacher_source)
            copy_teacher_layers(student, teacher, layers)
            log.info("distill: student = teacher layers %s of %d", layers, len(stack_))
        else:
            student = super().build_model(facts)
            check_compatible(student.config, teacher.config, self.teacher_source)
        self.teacher = teacher
        return student

    def configure_model(self) -> None:
        super().configure_model()
        teacher = self._modules.get("teacher")
        if teacher is None:
            return
        teacher.eval()
        teacher.requires_grad_(False)
        _quiet_eval_mode_warning()  # again in processes that ddp_spawn started (they import no filters)
        s = self.distill_settings
        if s["weights"]["hidden"] and getattr(self, PROJ) is None:
            self._build_projections()
        if self.device_mesh is not None and not getattr(teacher, "_distill_sharded", False):
            from lmforge.strategies import fully_shard_model

            fully_shard_model(teacher, self.device_mesh,
                              reshard_after_forward=self.sharding.get("reshard_after_forward", True))
            teacher._distill_sharded = True
            proj = getattr(self, PROJ)
            if proj is not None and any(True for _ in proj.parameters()):  # gradients reduced across ranks
                from torch.distributed.fsdp import fully_shard

                mesh = self.device_mesh
                fully_shard(proj, mesh=mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh)

    def _build_projections(self) -> None:
        student, teacher = self.trainable(), self._modules["teacher"]
        n_s = int(student.config.num_hidden_layers)
        n_t = int(teacher.config.num_hidden_layers)
        given = self.distill_settings["hidden"]["layer_map"]
        layer_map = [tuple(int(x) for x in pair) for pair in given] if given else L_.default_layer_map(n_s, n_t)
        for si, ti in layer_map:
            if not (0 <= si <= n_s and 0 <= ti <= n_t):
                raise ConfigError(f"distill.hidden.layer_map: pair [{si}, {ti}] is out of range (student hidden "
                                  f"states 0..{n_s}, teacher 0..{n_t}; 0 = embeddings)")
        ws, wt = model_width(student.config), model_width(teacher.config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed + 1)
            projs = [nn.Linear(ws, wt) if ws != wt else nn.Identity() for _ in layer_map]
        self.layer_map = layer_map
        setattr(self, PROJ, nn.ModuleList(projs))

    def train(self, mode: bool = True):
        super().train(mode)
        teacher = self._modules.get("teacher")
        if teacher is not None:
            teacher.eval()  # the teacher never drops out
        return self

    # -- forward -------------------------------------------------------------------------------
    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**super().model_inputs(batch), **self._distill_extra}

    @torch.no_grad()
    def teacher_forward(self, batch: Mapping[str, Any]) -> Any:
        """The task's forward pass with the teacher in the student's place (no gradients)."""
        modules = self._modules
        student = modules["model"]
        modules["model"] = modules["teacher"]
        try:
            return type(self).forward(self, batch)
        finally:
            modules["model"] = student

    def teacher_outputs(self, batch: Mapping[str, Any]) -> Any:
        """The teacher's outputs for ``batch``: from the cache where every example is cached, else computed
        (and the missing examples cached)."""
        cache = self.teacher_cache
        if cache is None:
            return self.teacher_forward(batch)
        keys = example_keys(batch)
        found = cache.lookup(keys)
        if all(v is not None for v in found):
            values = stack(found, cache.axes, batch, self.device)  # type: ignore[arg-type]
            return values if self._outputs_are_embeddings else types.SimpleNamespace(**values)
        out = self.teacher_forward(batch)
        self._outputs_are_embeddings = isinstance(out, Mapping) and not hasattr(out, "logits")
        cache.store(keys, out, batch, [i for i, v in enumerate(found) if v is None])
        return out

    _outputs_are_embeddings = False

    def distill_positions(self, batch: Mapping[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """Token positions whose logits the soft-target loss compares ([batch, length] bool): positions with a
        label (``labels`` != -100; for a causal LM, positions whose next token has one), else the real tokens
        (the attention mask; a causal LM's last position predicts nothing)."""
        b, n = logits.shape[:2]
        causal = is_causal(self.trainable())
        labels = batch.get("labels")
        if isinstance(labels, torch.Tensor) and labels.shape[:2] == (b, n):
            if causal:
                mask = torch.zeros(b, n, dtype=torch.bool, device=logits.device)
                mask[:, :-1] = labels[:, 1:] != L_.IGNORE
                return mask
            return labels != L_.IGNORE
        am = batch.get("attention_mask")
        mask = am.bool().clone() if isinstance(am, torch.Tensor) and am.shape[:2] == (b, n) else \
            torch.ones(b, n, dtype=torch.bool, device=logits.device)
        if causal:
            mask[:, -1] = False
        return mask

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        s = self.distill_settings
        w = s["weights"]
        bs = self.batch_size_of(batch)
        terms = self.distill_losses(batch)
        transfer = self._next_transfer_batch()
        if transfer is not None:
            terms["transfer_kd"] = self.distill_losses(transfer, labelled=False)["kd"]
        total = sum(w["kd" if k == "transfer_kd" else k] * v for k, v in terms.items())
        self.log("train/loss", total, batch_size=bs)  # not prog_bar: no host sync per step (see TaskModule)
        for k, v in terms.items():
            self.log(f"train/distill_{k}", v.detach(), batch_size=bs)
        if self.teacher_cache is not None:
            c = self.teacher_cache
            self.log("train/distill_cache_hit_rate", c.hits / max(1, c.hits + c.misses), batch_size=bs)
        return total

    def distill_losses(self, batch: Mapping[str, Any], labelled: bool = True) -> dict[str, torch.Tensor]:
        """Every loss with a non-zero weight (``labelled=False``: the soft-target loss only), unweighted."""
        s = self.distill_settings
        w = s["weights"]
        uses_teacher = any(w[k] for k in TEACHER_LOSSES)
        need_hidden, need_qkv = bool(w["hidden"]) and labelled, bool(w["attention"] or w["value"]) and labelled
        captured: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
        hooks = []
        if need_qkv:
            for who, model in (("student", self.trainable()), ("teacher", self._modules["teacher"])):
                for role, m in qkv_modules(model).items():
                    hooks.append(m.register_forward_hook(_capture(captured[who], role)))
        self._distill_extra = {"output_hidden_states": True} if need_hidden else {}
        try:
            outputs = self(batch)
            t_out = self.teacher_outputs(batch) if (uses_teacher or not labelled) else None
        finally:
            self._distill_extra = {}
            for h in hooks:
                h.remove()
        terms: dict[str, torch.Tensor] = {}
        if w["task"] and labelled:
            terms["task"] = self.loss(outputs, batch)
        if w["kd"] or not labelled:
            terms["kd"] = L_.output_kd(outputs, t_out, batch, s["temperature"],
                                       positions=lambda logits: self.distill_positions(batch, logits),
                                       regression=bool(getattr(self, "is_regression", False)),
                                       embedding=s["embedding_loss"])
        mask = batch.get("attention_mask")
        if need_hidden:
            hs, ht = _hidden_states(outputs), _hidden_states(t_out)
            if hs is None or ht is None:
                raise ConfigError(f"distill=hidden: {type(self).__name__}'s outputs carry no hidden states; "
                                  "use distill=logits for this task")
            terms["hidden"] = L_.hidden_loss(hs, ht, self.layer_map, getattr(self, PROJ), mask if
                                             isinstance(mask, torch.Tensor) and mask.shape[:2] == hs[0].shape[:2]
                                             else None, s["hidden"]["loss"])
        if need_qkv:
            heads = int(s["minilm"]["relation_heads"] or attention_heads(self.trainable().config))
            causal = is_causal(self.trainable())
            cs, ct = captured["student"], captured["teacher"]
            m = mask if isinstance(mask, torch.Tensor) and mask.shape[:2] == cs["q"].shape[:2] else None
            if w["attention"]:
                terms["attention"] = L_.relation_kl(cs["q"], ct["q"], heads, m, causal, cs["k"], ct["k"])
            if w["value"]:
                terms["value"] = L_.relation_kl(cs["v"], ct["v"], heads, m, causal)
        return terms

    def configure_optimizers(self):
        out = super().configure_optimizers()
        proj = getattr(self, PROJ)
        params = [p for p in proj.parameters() if p.requires_grad] if proj is not None else []
        if params:  # the learned projections train with the student (same schedule), without weight decay
            opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
            lr = opt.defaults["lr"]
            opt.add_param_group({"params": params, "weight_decay": 0.0, "lr": lr})
            opt.param_groups[-1]["initial_lr"] = lr
            sched.base_lrs.append(lr)
            sched.lr_lambdas.append(sched.lr_lambdas[0])
            opt.param_groups[-1]["lr"] = lr * sched.lr_lambdas[0](sched.last_epoch)
        return out

    # -- unlabelled transfer texts -------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        path = self.distill_settings["transfer_file"]
        if path and self._transfer is None:
            dm = self.trainer.datamodule
            records = dm.read_inputs(path)
            examples = dm.encode_inputs(records)
            rank, world = self.global_rank, self.trainer.world_size
            examples = examples[rank::world] if world > 1 else examples
            if not examples:
                raise ConfigError(f"distill.transfer_file={path}: no texts")
            bs = int(self.distill_settings["transfer_batch_size"] or getattr(dm, "batch_size", 32) or 32)
            probe = dm.collate(examples[:1])
            try:
                super().model_inputs(probe)
            except KeyError as e:
                raise ConfigError(f"distill.transfer_file: {type(self).__name__} needs {e} in a batch, which unlabelled "
                                  "texts do not have; transfer texts serve encoder tasks") from None
            self._transfer = _Cycle(examples, bs, dm.collate, seed=self.init_seed + rank)
            log.info("distill: %d transfer texts (soft targets only)", len(examples))

    def _next_transfer_batch(self) -> dict | None:
        if self._transfer is None:
            return None
        batch = next(self._transfer)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _Cycle:
    """Endless shuffled batches of encoded examples."""

    def __init__(self, examples: list, batch_size: int, collate: Any, seed: int):
        self.examples, self.batch_size, self.collate = examples, batch_size, collate
        self.rng = random.Random(seed)
        self._it: Iterator = iter(())

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        try:
            return next(self._it)
        except StopIteration:
            order = list(range(len(self.examples)))
            self.rng.shuffle(order)
            self._it = iter([self.collate([self.examples[i] for i in order[j: j + self.batch_size]])
                             for j in range(0, len(order), self.batch_size)])
            return next(self._it)


def _capture(store: dict, role: str):
    def hook(module, args, output):
        store[role] = output
    return hook


def _hidden_states(outputs: Any):
    if outputs is None:
        return None
    hs = getattr(outputs, "hidden_states", None)
    if hs is None:
        hs = getattr(outputs, "decoder_hidden_states", None)
    return hs

