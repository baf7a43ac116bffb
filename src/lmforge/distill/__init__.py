"""Knowledge distillation as a wrapper around any task module (``distill=logits|hidden|minilm``).

``python train.py experiment=sst2 distill=logits distill.teacher=<run dir | export folder | hub id>``:
the task's module becomes the student, a frozen teacher is added (:mod:`lmforge.distill.wrapper`), the losses
are in :mod:`lmforge.distill.losses`. The run's export is the student, a plain model of the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.distill.wrapper import PROJ, distill, settings, student_model_cfg

__all__ = ["check_distill", "distill", "settings", "student_run_config", "student_state_dict"]


def student_run_config(run_cfg: DictConfig, run: str | Path | None = None) -> DictConfig:
    """A distilled run's config as the plain student task's (eval.py): no ``distill``, and for a student made of
    teacher layers, the student's architecture (the run's export config, else the teacher's with fewer layers)."""
    d = run_cfg.get("distill")
    if not d:
        return run_cfg
    student = (d.get("student") or {})
    run_cfg = run_cfg.copy()
    with open_dict(run_cfg):
        if student.get("init") == "teacher_layers":
            export = Path(run) / "export" if run is not None else None
            if export is not None and (export / "config.json").is_file():
                model = OmegaConf.to_container(run_cfg.model, resolve=True)
                model = {**model, "name_or_path": str(export), "pretrained": False}
                model["config_overrides"] = {k: v for k, v in (model.get("config_overrides") or {}).items()
                                             if k != "num_hidden_layers"}
            else:
                from transformers import AutoConfig

                from lmforge.distill.teacher import resolve_teacher, student_layers

                source = resolve_teacher(d.get("teacher"))
                n = int(AutoConfig.from_pretrained(source).num_hidden_layers)
                layers = student_layers(n, student.get("layers"), student.get("every"))
                model = student_model_cfg(run_cfg.model, source, len(layers))
            run_cfg.model = OmegaConf.create(model)
        run_cfg.distill = None
    return run_cfg


def student_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """A distilled run's checkpoint state without the distillation's own trained modules (projections)."""
    return {k: v for k, v in state.items() if not k.startswith(f"{PROJ}.")}


def check_distill(cfg: Mapping) -> None:
    """``cfg.distill`` settings and teacher location, checked cheaply (train() calls it before reading data)."""
    from lmforge.distill.teacher import resolve_teacher

    resolve_teacher(settings(cfg)["teacher"])
