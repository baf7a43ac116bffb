"""``train(cfg) -> metrics``: the library function behind ``train.py`` and ``lmforge-train``.

Order matters and is chosen so that bad input fails before expensive work: config checks, then the
data is read, checked and tokenized (cached), and only then is the model loaded and trained.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.callbacks import build_callbacks
from lmforge.loggers import build_loggers, finish_loggers, log_table, start_loggers
from lmforge.strategies import full_state_dict
from lmforge.sweeps import assign_device_for_job
from lmforge.utils.checks import check_config
from lmforge.utils.distributed import apply_global_batch_size, pin_sweep_job_for_subprocess_launcher
from lmforge.utils.rich_utils import print_config_tree

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    from lmforge.models.factory import tokenizer_source

    # tasks that can train their own tokenizer (pretraining) accept a model that names none
    tokenizer = tokenizer_source(cfg.model, required=cfg.task.get("tokenizer_required", True))
    data = {k: v for k, v in cfg.data.items() if k not in RUN_DATA_KEYS}
    try:
        return hydra.utils.instantiate(cfg.task.datamodule, **data, tokenizer=tokenizer,
                                       seed=cfg.seed, _convert_="object")
    except hydra.errors.InstantiationException as e:
        # the datamodule's own error (a missing file, a bad value) says more than Hydra's wrapper around it
        from lmforge.utils.errors import LMForgeError

        if isinstance(e.__cause__, (LMForgeError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def build_module(cfg: DictConfig) -> L.LightningModule:
    module = hydra.utils.instantiate(cfg.task.module, model=cfg.model, optimizer=cfg.optimizer,
                                     scheduler=cfg.scheduler, _recursive_=False)
    module.init_seed = int(cfg.seed)
    s = cfg.get("strategy") or {}
    if s.get("name") == "fsdp":
        module.fsdp_options = {"reshard_after_forward": s.get("reshard_after_forward", True)}
        if s.get("activation_checkpointing"):
            module.model_cfg["gradient_checkpointing"] = True
    return module


def build_strategy(cfg: DictConfig) -> Any:
    s = cfg.get("strategy")
    if s is None:
        return "auto"
    if "_target_" in s:
        # `name` labels the option; the rest of LMFORGE_STRATEGY_KEYS are applied by the module
        kwargs = {k: v for k, v in s.items() if k not in LMFORGE_STRATEGY_KEYS}
        if s.get("name") == "fsdp" and kwargs.get("data_parallel_size") == "auto":
            # Lightning's "auto" means one data-parallel group per node; FSDP2 here shards over all ranks
            from lmforge.utils.distributed import world_size

            kwargs["data_parallel_size"] = world_size(cfg) // int(kwargs.get("tensor_parallel_size") or 1)
        return hydra.utils.instantiate(kwargs, _convert_="object")
    return s.get("name", "auto")


LMFORGE_STRATEGY_KEYS = ("name", "activation_checkpointing", "reshard_after_forward")
# data keys that the run consumes itself (not DataModule arguments)
RUN_DATA_KEYS = ("global_batch_size",)


def build_trainer(cfg: DictConfig, callbacks: list | None = None, loggers: list | None = None) -> L.Trainer:
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks if callbacks is not None else build_callbacks(cfg),
                                   logger=loggers if loggers is not None else (build_loggers(cfg) or False),
                                   strategy=build_strategy(cfg), _convert_="object")


def _floats(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _spawns(trainer: L.Trainer) -> bool:
    return getattr(trainer.strategy, "_start_method", None) in ("spawn", "fork", "forkserver")


def _checkpoint_callback(trainer: L.Trainer):
    return getattr(trainer, "checkpoint_callback", None)


@rank_zero_only
def _save_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: a checkpoint file, or ``last``: the newest ``last.ckpt`` of this task's earlier runs
    (``<paths.log_dir>/<task_name>/runs/*/checkpoints/last.ckpt``, this run excluded)."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    if str(ckpt) != "last":
        p = Path(ckpt).expanduser()
        if not (p.is_file() or (p / "meta.pt").is_file()):  # a file, or an FSDP2 sharded checkpoint folder
            raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint file (or sharded checkpoint folder)")
        return str(Path(ckpt).expanduser())
    runs = Path(cfg.paths.log_dir) / str(cfg.task_name) / "runs"
    here = Path(cfg.paths.output_dir).resolve()
    found = [p for p in runs.glob("*/checkpoints/last.ckpt") if p.resolve().parents[1] != here]
    if not found:
        raise FileNotFoundError(f"ckpt_path=last: no earlier run of {cfg.task_name} has a checkpoints/last.ckpt under {runs}")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    log.info("ckpt_path=last: resuming from %s", newest)
    if rank_zero_only.rank == 0:
        print(f"resuming from {newest}")
    return str(newest)


def prepare_run(cfg: DictConfig) -> Path:
    """Print the config, seed everything, write the resolved config into the run directory."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("extras", {}).get("ignore_warnings"):
        import warnings

        warnings.filterwarnings("ignore")
    if cfg.get("extras", {}).get("print_config", True):
        print_config_tree(cfg, save_to=out / "config_tree.log")
    if rank_zero_only.rank == 0:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True)
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test, export and predict as ``cfg`` says; returns the final metrics.

    Leaves the process as it found it (environment, process group, W&B run), so the next job of a
    sweep in this process starts clean.
    """
    env_before = dict(os.environ)
    try:
        return _train(cfg)
    finally:
        end_job(env_before)


def end_job(env_before: dict[str, str]) -> None:
    """Finish the W&B run, leave the process group, restore the environment Lightning's launcher changed."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for k in set(os.environ) - set(env_before):
        del os.environ[k]
    os.environ.update(env_before)


def _train(cfg: DictConfig) -> dict[str, float]:
    t0 = time.time()
    assign_device_for_job(cfg)  # joblib sweeps on GPUs: this job's own device, before CUDA starts
    check_config(cfg)
    apply_global_batch_size(cfg)
    pin_sweep_job_for_subprocess_launcher(cfg)
    out = prepare_run(cfg)
    ckpt_path = resolve_ckpt_path(cfg)  # a missing checkpoint fails before any data is read

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()  # read + check + tokenize (or cache hit) before any model is loaded
    module = build_module(cfg)
    loggers = build_loggers(cfg, out, resume_from=ckpt_path)
    callbacks = build_callbacks(cfg, loggers)
    trainer = build_trainer(cfg, callbacks, loggers)
    start_loggers(loggers, cfg, out)

    if _spawns(trainer):
        # ddp_spawn trains in child processes and hands the weights back to this one: the model must
        # exist here first, built from the same facts
        datamodule.setup("fit")
        module.fixed_facts = datamodule.model_facts()
        module.configure_model()

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(_floats(trainer.callback_metrics))
    else:
        trainer.strategy.connect(module)

    ckpt_cb = _checkpoint_callback(trainer)
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if cfg.get("test", True):
        if best is None and not cfg.get("train", True):
            log.warning("no checkpoint to test: testing the model as built")
        trainer.test(module, datamodule=datamodule, ckpt_path=best if best else None)
        metrics.update(_floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
    elif best and Path(best).is_file():
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])

    if module.model is not None:
        counts = module.parameter_counts()
        metrics.update({"params/total": float(counts["total"]), "params/non_embedding": float(counts["non_embedding"])})

    if cfg.get("export", True) and module.model is not None:
        state = full_state_dict(module.model)  # FSDP2: gathered on every rank (a collective), else None
        if trainer.is_global_zero:
            folder = module.export(out / "export", tokenizer=getattr(datamodule, "tokenizer", None), state_dict=state)
            log.info("exported a Hugging Face model to %s", folder)

    texts = list(cfg.get("predict", {}).get("texts") or [])
    # every rank predicts: with FSDP2 a forward pass is a collective; only rank 0 prints and saves
    if texts and hasattr(module, "predict_texts"):
        preds = module.predict_texts(datamodule, texts)
        print_predictions(preds)
        _save_json(out / "predictions.json", preds)
        log_table(trainer, "predictions", ["text", "label", "score"],
                  [[p["text"], p["label"], p["score"]] for p in preds], out)

    metrics["time/total_sec"] = time.time() - t0
    metrics["world_size"] = float(trainer.world_size)
    if best:
        metrics_best = {"best_checkpoint": best}
    else:
        metrics_best = {}
    _save_json(out / "metrics.json", {**metrics, **metrics_best})
    finish_loggers(loggers, metrics, cfg.task.get("monitor"), ckpt_cb.best_model_score if ckpt_cb else None)
    return metrics


@rank_zero_only
def print_predictions(preds: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="predictions on new text")
    table.add_column("text")
    table.add_column("label")
    table.add_column("score", justify="right")
    for p in preds:
        table.add_row(p["text"], str(p["label"]), f"{p['score']:.3f}")
    Console().print(table)


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweep optimizes (``optimized_metric``); NaN when the run did not produce it."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name} was not logged; logged: {', '.join(sorted(metrics))}")
    return metrics[name]
