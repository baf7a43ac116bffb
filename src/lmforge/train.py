"""``train(cfg) -> metrics``: the library function behind ``train.py`` and ``lmforge-train``.

The path from the config to ``L.Trainer`` reads top to bottom in :func:`_train`: checks, then the
data (read, checked and tokenized before any model is loaded, so bad input fails cheaply), the task
module, loggers and callbacks, the trainer, then fit, test, export and predictions. It calls the task
contract (:mod:`lmforge.tasks.base`, :mod:`lmforge.data.datamodule`) and nothing task-specific.
"""

from __future__ import annotations

import json
import logging
import math
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
from lmforge.callbacks.final_validation import validate_if_missing
from lmforge.checkpoints import fit_checkpoint_kwargs, load_checkpoint, register_safe_globals
from lmforge.faults import check_devices, disk_full_errors
from lmforge.loggers import build_loggers, finish_loggers, log_table, start_loggers
from lmforge.strategies import full_state_dict
from lmforge.sweeps import assign_device_for_job
from lmforge.utils.checks import check_config
from lmforge.utils.distributed import global_batch_accumulation, pin_sweep_job_for_subprocess_launcher
from lmforge.utils.errors import LMForgeError
from lmforge.utils.rich_utils import print_config_tree

log = logging.getLogger(__name__)

# data keys that the run consumes itself (not DataModule arguments)
RUN_DATA_KEYS = ("global_batch_size",)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    from lmforge.models.factory import tokenizer_source, trust_remote_code

    # tasks that can train their own tokenizer (pretraining) accept a model that names none
    tokenizer = tokenizer_source(cfg.model, required=cfg.task.get("tokenizer_required", True))
    data = {k: v for k, v in cfg.data.items() if k not in RUN_DATA_KEYS}
    if data.get("source") == "litdata":  # chunks written by lmforge-prepare: the task's datamodule reading them
        data.update(_target_="lmforge.data.litdata_source.build", target=cfg.task.datamodule._target_)
    return _instantiate(cfg.task.datamodule, **data, tokenizer=tokenizer, seed=cfg.seed,
                        trust_remote_code=trust_remote_code(cfg.model), _convert_="object")


def build_module(cfg: DictConfig, facts: dict | None = None) -> L.LightningModule:
    """The task's module; ``facts`` (eval.py: from the checkpoint) fix the model instead of the DataModule's."""
    strategy = cfg.get("strategy") or {}
    module = _instantiate(cfg.task.module, model=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler,
                          seed=int(cfg.seed), sharding=strategy.get("sharding"), facts=facts, _recursive_=False)
    if cfg.get("distill"):  # distill=logits|hidden|minilm: the task's module becomes the student of a frozen teacher
        from lmforge.distill import distill
        from lmforge.models.factory import trust_remote_code

        module = distill(module, cfg.distill, trust_remote_code=trust_remote_code(cfg.model))
    from lmforge.tasks.base import compile_options

    module.compile_options = compile_options(cfg.get("trainer"))  # trainer.compile: applied in configure_model
    return module


def build_strategy(cfg: DictConfig) -> Any:
    """``cfg.strategy`` without its ``name`` label, instantiated; or Lightning's name when it has no ``_target_``."""
    s = cfg.get("strategy")
    if s is None:
        return "auto"
    if "_target_" not in s:
        return s.get("name", "auto")
    kwargs = {k: v for k, v in s.items() if k not in ("name", "sharding")}
    return hydra.utils.instantiate(kwargs, _convert_="object")


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    kwargs: dict[str, Any] = {}
    accumulate = global_batch_accumulation(cfg)  # data.global_batch_size over this many processes
    if accumulate is not None:
        kwargs["accumulate_grad_batches"] = accumulate
    from lmforge.faults import guard_checkpoint_writes, nan_guard, split_trainer_config

    trainer_cfg, own = split_trainer_config(cfg.trainer)  # trainer.detect_nan & co. are lmforge's, not L.Trainer's
    guard = nan_guard(own)
    trainer = hydra.utils.instantiate(trainer_cfg, callbacks=[*callbacks, *([guard] if guard else [])],
                                      logger=loggers or False, strategy=build_strategy(cfg), **kwargs,
                                      _convert_="object")
    guard_checkpoint_writes(trainer)  # a full disk: `disk full while writing <checkpoint>`
    return trainer


def _instantiate(node: DictConfig, **kwargs: Any) -> Any:
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except hydra.errors.InstantiationException as e:
        # lmforge's own error (a missing file, a bad value) says more than Hydra's wrapper around it
        if isinstance(e.__cause__, (LMForgeError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def _floats(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


@rank_zero_only
def _save_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: a checkpoint file (or FSDP2 sharded folder), or ``last``: the newest good checkpoint of this
    task's earlier runs with this model and data; checked (whole, safe to load) before any data is read.
    See :func:`lmforge.checkpoints.resolve_ckpt_path`."""
    from lmforge.checkpoints import resolve_ckpt_path as resolve

    return resolve(cfg)


def _same_model_and_data(cfg: DictConfig, saved: Path) -> bool:
    from lmforge.checkpoints import same_model_and_data

    return same_model_and_data(cfg, saved)


def prepare_run(cfg: DictConfig) -> Path:
    """Print the config, seed everything, write the resolved config into the run directory."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("extras", {}).get("ignore_warnings"):
        import warnings

        warnings.filterwarnings("ignore")
    from lmforge.utils.secrets import install_log_redaction, redact_config, redact_hydra_files

    install_log_redaction()  # secret environment values never reach the logs
    shown = redact_config(cfg)  # ... nor the config tree and config.yaml
    if cfg.get("extras", {}).get("print_config", True):
        print_config_tree(shown, save_to=out / "config_tree.log")
    if rank_zero_only.rank == 0:
        OmegaConf.save(shown, out / "config.yaml", resolve=True)
        redact_hydra_files(out)  # Hydra wrote the command line's overrides into <run>/.hydra before the job
    L.seed_everything(cfg.seed, workers=True)
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test, export and predict as ``cfg`` says; returns the final metrics.

    Leaves the process as it found it (environment, process group, W&B run), so the next job of a
    sweep in this process starts clean.
    """
    from lmforge.utils.quiet import quiet

    quiet()  # library noise a user cannot act on stays out of the output
    env_before = dict(os.environ)
    try:
        return _train(cfg)
    except BaseException:
        from lmforge.faults import bound_exit

        bound_exit()  # a failing rank of a distributed run ends within 30 s, whatever its cleanup waits for
        raise
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
    check_devices(cfg)  # trainer.devices against this machine's CPU cores / GPUs
    from lmforge.serving import check_precision

    predict_precision = check_precision((cfg.get("predict") or {}).get("precision", "auto"))
    from lmforge.tasks.base import compile_options

    compile_options(cfg.get("trainer"))  # a bad trainer.compile value, or no C++ compiler for it, before any data is read
    if cfg.get("distill"):  # the distillation settings and the teacher's location, before any data is read
        from lmforge.distill import check_distill

        check_distill(cfg.distill)
    pin_sweep_job_for_subprocess_launcher(cfg)
    out = prepare_run(cfg)
    ckpt_path = resolve_ckpt_path(cfg)  # a missing checkpoint fails before any data is read

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()  # read + check + tokenize (or cache hit) before any model is loaded
    datamodule.setup("fit")  # only loads the cache; tells which splits carry labels
    validates = "validation" in datamodule.labelled_splits()
    if not validates:
        cfg = without_validation(cfg)
    if _spawns_strategy(cfg):
        # ddp_spawn trains in child processes and hands the weights back to this one: the model must
        # exist here first, built from the same facts
        module = build_module(cfg, facts=datamodule.model_facts())
        module.configure_model()
    else:
        module = build_module(cfg)
    loggers = build_loggers(cfg, out, resume_from=ckpt_path)
    callbacks = build_callbacks(cfg, loggers)
    trainer = build_trainer(cfg, callbacks, loggers)
    start_loggers(loggers, cfg, out)

    unsafe = bool(cfg.get("unsafe_load", False))
    register_safe_globals()  # checkpoints load with torch.load(weights_only=True) and this allow-list only
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, **fit_checkpoint_kwargs(ckpt_path, unsafe=unsafe))
        if validates:  # a resumed run that had already finished trained no step: validate so its metric exists
            validate_if_missing(trainer, module, datamodule, cfg.task.get("monitor"))
        metrics.update(_floats(trainer.callback_metrics))
    else:
        trainer.strategy.connect(module)
        module.configure_model()

    best = _best_checkpoint(trainer)
    tested = bool(cfg.get("test", True)) and "test" in datamodule.labelled_splits()
    if tested:  # the best checkpoint's weights are loaded into the module, which export and predict use too
        module.eval_output_dir = out  # the task's own evaluation files (e.g. predictions.conll) go beside the run
        trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=not unsafe)
        metrics.update(_floats({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
    else:
        if cfg.get("test", True) and rank_zero_only.rank == 0:
            print("no labelled test split: this run reports no test/* metrics "
                  "(add one with data.test_file=..., or evaluate a file later: eval.py run=<run> file=...)")
        if best and Path(best).is_file():  # export and predict with the best weights
            module.load_state_dict(load_checkpoint(best, unsafe=unsafe)["state_dict"])

    counts = module.parameter_counts()
    metrics.update({"params/total": float(counts["total"]), "params/non_embedding": float(counts["non_embedding"])})

    if cfg.get("export", True):
        state = full_state_dict(module.trainable())  # FSDP2: gathered on every rank (a collective), else None
        if trainer.is_global_zero:
            with disk_full_errors(out / "export", f"; the checkpoints under {out / 'checkpoints'} are intact"):
                folder = module.export(out / "export", tokenizer=datamodule.tokenizer, state_dict=state)
            log.info("exported a Hugging Face model to %s", folder)

    inputs = list((cfg.get("predict") or {}).get("texts") or [])
    if inputs:  # every rank predicts (with FSDP2 a forward pass is a collective); rank 0 prints and saves
        module.predict_precision = predict_precision  # these predictions only: test metrics keep the run's precision
        records = module.predict(inputs, datamodule)
        if trainer.is_global_zero:
            print_predictions(records, "predictions on new inputs")
            module.write_predictions(records, out / "predictions.jsonl")
            columns = list(records[0]) if records else []
            log_table(trainer, "predictions", columns, [[_cell(r.get(c)) for c in columns] for r in records],
                      write_file=False)  # predictions.jsonl is the task's own file, written above

    metrics["time/total_sec"] = time.time() - t0
    metrics["world_size"] = float(trainer.world_size)
    _save_json(out / "metrics.json", {**metrics, **({"best_checkpoint": best} if best else {})})
    ckpt_cb = getattr(trainer, "checkpoint_callback", None)
    finish_loggers(loggers, metrics, cfg.task.get("monitor"), ckpt_cb.best_model_score if ckpt_cb else None)
    if trainer.is_global_zero and not trainer.fast_dev_run:  # <run>/report.md: command, config, metrics, pictures, export
        from lmforge.reports.run_report import write_run_report

        write_run_report(cfg, out, task_cls=type(module))
    return metrics


def without_validation(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` for data without a labelled validation split: no validation loop, no early stopping,
    checkpoints of the newest state only (nothing to rank them by). Said once; the run goes on."""
    if rank_zero_only.rank == 0:
        print("no labelled validation split (data.validation_fraction=0 and no validation file): nothing is "
              "validated, early stopping is off and checkpoints keep the newest state")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.num_sanity_val_steps = 0
        if cfg.get("callbacks"):
            cfg.callbacks.early_stopping = None
            if cfg.callbacks.get("model_checkpoint"):
                cfg.callbacks.model_checkpoint.monitor = None
                cfg.callbacks.model_checkpoint.save_top_k = 1
        cfg.optimized_metric = None
    return cfg


def _spawns_strategy(cfg: DictConfig) -> bool:
    return str((cfg.get("strategy") or {}).get("start_method", "")) in ("spawn", "fork", "forkserver")


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    cb = getattr(trainer, "checkpoint_callback", None)
    best = cb.best_model_path if cb is not None else None
    return best if best and Path(best).exists() else None


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(_rounded(value), ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


@rank_zero_only
def print_predictions(records: list[dict], title: str) -> None:
    """Prediction records as a table: one column per field, nested values as JSON."""
    from rich.console import Console
    from rich.table import Table

    if not records:
        return
    table = Table(title=title)
    columns = list(records[0])
    for c in columns:
        table.add_column(c, justify="right" if isinstance(records[0].get(c), float) else "left")
    for r in records:
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r.get(c), float) else _cell(r.get(c)) for c in columns])
    Console().print(table)


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweep optimizes (``optimized_metric``); NaN, with a warning, when the run did not produce
    it (a run without a validation split), so a sweep records the trial as failed instead of crashing."""
    if not name:
        return None
    if name not in metrics:
        log.warning("optimized_metric=%s was not logged (logged: %s); returning NaN", name, ", ".join(sorted(metrics)))
        return math.nan
    return metrics[name]
