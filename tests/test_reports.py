"""Pictures and reports: <run>/plots/*.png and report.md of every run, sweep_report.md and plots/sweep.png of
every -m sweep (grid and Optuna), figures sent to TensorBoard and W&B, curves that continue on resume."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_cfg
from lmforge.reports import plots
from lmforge.reports.sweep_report import rank_jobs, read_job, write_sweep_report
from lmforge.train import train

SHORT = [*TINY, "trainer.max_epochs=2", "data.max_train_samples=160", "data.max_eval_samples=64",
         "trainer.log_every_n_steps=1"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND", f"{path} is cut short"
    return struct.unpack(">II", data[16:24])


def assert_picture(path: Path, min_bytes: int = 8000) -> None:
    assert path.is_file(), f"missing {path}"
    w, h = png_size(path)
    assert w >= 200 and h >= 150, (path, w, h)
    assert path.stat().st_size >= min_bytes, (path, path.stat().st_size)  # drawn, not an empty canvas


class Recorder:
    """Wraps a plots.* function and keeps what it was called with and the figure it returned."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        fig = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, fig))
        return fig


@pytest.fixture(scope="module")
def tc_run(tmp_path_factory):
    """A tiny text-classification run with TensorBoard and W&B (offline) on, shared by the tests below."""
    base = tmp_path_factory.mktemp("reports_tc")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    confusion = Recorder(plots.confusion_figure)
    mp.setattr(plots, "confusion_figure", confusion)
    try:
        cfg = compose_cfg([*SHORT, "logger=many", "callbacks.plots.min_interval_s=0"], base / "run", base / "cache")
        metrics = train(cfg)
    finally:
        mp.undo()
    return Path(cfg.paths.output_dir), cfg, metrics, confusion.calls, base


def test_every_picture_is_written_with_any_logger(tc_run):
    run, _, _, _, _ = tc_run
    for name in ("loss", "metrics", "lr", "confusion_matrix", "confusion_matrix_test"):
        assert_picture(run / "plots" / f"{name}.png")
    assert not list((run / "plots").glob(".*tmp"))  # written whole (temporary name, then renamed)


def test_confusion_matrix_has_the_label_names_and_counts_every_validation_example(tc_run):
    _, _, _, calls, _ = tc_run
    val = [c for c in calls if "validation" in c[1].get("title", "")]
    test = [c for c in calls if "test" in c[1].get("title", "")]
    assert val and test
    (matrix, labels), _, fig = val[-1]
    assert labels == ["negative", "positive"]
    assert sum(map(sum, matrix)) == 64  # data.max_eval_samples: every validation example counted once
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert ax.get_xlabel() == "predicted label" and ax.get_ylabel() == "true label"


def test_report_md_has_command_config_metrics_pictures_and_export(tc_run):
    run, cfg, metrics, _, _ = tc_run
    text = (run / "report.md").read_text()
    command = re.search(r"```bash\n(.*?)\n```", text, re.S).group(1)
    assert command.startswith("python train.py ") and "model/size=tiny" in command and "logger=many" in command
    assert "| optimizer | AdamW, lr 0.001, weight decay 0.01 |" in text
    assert "| seed | 42 |" in text and "| precision | 32-true |" in text
    saved = json.loads((run / "metrics.json").read_text())
    assert f"| test/accuracy | {saved['test/accuracy']:.4g} |" in text
    assert f"| val/score | {metrics['val/score']:.4g} |" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    for name in ("loss", "metrics", "lr", "confusion_matrix"):
        assert f"plots/{name}.png" in links
    for link in links:
        assert (run / link).exists(), link  # every relative link points at a file of the run
    assert f'pipeline("text-classification", model="{(run / "export").resolve()}")' in text
    assert "AutoModelForSequenceClassification.from_pretrained(" in text


def test_report_snippet_loads_the_export(tc_run):
    run, _, _, _, _ = tc_run
    text = (run / "report.md").read_text()
    code = re.search(r"```python\n(.*?)\n```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "report.md", "exec"), scope)  # the snippet as a user pastes it
    assert scope["model"].config.id2label == {0: "negative", 1: "positive"}
    assert scope["pipe"]("a fine film")[0]["label"] in ("negative", "positive")


def test_figures_reach_tensorboard_and_wandb(tc_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmforge.utils.wandb_offline import find_runs, read_run

    run, _, _, _, _ = tc_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"plots/loss", "plots/metrics", "plots/lr", "plots/confusion_matrix",
            "plots/confusion_matrix_test"} <= images
    cm = events.Images("plots/confusion_matrix")
    assert len(cm) == 2 and cm[0].width > 200  # after each of the two validations
    logged = set()
    for row in read_run(find_runs(run)[0])["history"]:
        logged |= {k[: -len("/_type")] for k, v in row.items() if k.endswith("/_type") and v == "images/separated"}
    assert {"plots/loss", "plots/confusion_matrix", "plots/confusion_matrix_test"} <= logged, logged
    assert list(run.glob("wandb/offline-run-*/files/media/images/plots/confusion_matrix_*.png"))


def test_resumed_run_continues_the_curves(tc_run):
    run, _, _, _, base = tc_run
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain containers only
    state = next(v for k, v in first["callbacks"].items() if k.startswith("Plots"))["history"]
    steps = [r["step"] for r in state["val"]]
    epoch = steps[0]  # optimizer steps per epoch (one validation per epoch)
    assert epoch > 1 and steps == [epoch, 2 * epoch]
    assert len(state["train"]["step"]) == 2 * epoch  # trainer.log_every_n_steps=1: every step
    cfg = compose_cfg([*SHORT, "trainer.max_epochs=3", "logger=none", "export=false", "predict.texts=null",
                       f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], base / "resumed", base / "cache")
    train(cfg)
    second = torch.load(base / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    history = next(v for k, v in second["callbacks"].items() if k.startswith("Plots"))["history"]
    assert [r["step"] for r in history["val"]] == [epoch, 2 * epoch, 3 * epoch]
    assert history["train"]["step"] == list(range(1, 3 * epoch + 1))
    assert history["train"]["loss"][: 2 * epoch] == state["train"]["loss"]
    assert_picture(base / "resumed" / "plots" / "loss.png")


def test_ner_run_draws_f1_per_entity_type_without_a_logger(tmp_path, monkeypatch):
    bars = Recorder(plots.bars_figure)
    monkeypatch.setattr(plots, "bars_figure", bars)
    cfg = compose_cfg([*TINY, "task=token_classification", "trainer.max_epochs=1", "data.max_train_samples=64",
                       "data.max_eval_samples=32", "logger=none", "export=false", "predict.texts=null"],
                      tmp_path / "run", tmp_path / "cache")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert_picture(run / "plots" / "f1_per_type.png", min_bytes=5000)
    assert_picture(run / "plots" / "loss.png")
    (values,), _, fig = [c for c in bars.calls if "validation" in c[1]["title"]][-1]
    types = {k[len("val/f1_"):] for k in metrics if k.startswith("val/f1_")}
    assert types and set(values) == types | {"(all, micro)"}
    for t in types:
        assert values[t] == pytest.approx(metrics[f"val/f1_{t}"], abs=1e-6)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][: len(values)] == list(values)
    assert "f1_per_type.png" in (run / "report.md").read_text()


def test_fast_dev_run_writes_no_pictures_and_no_report(tmp_path):
    cfg = compose_cfg([*TINY, "debug=fdr", "predict.texts=null"], tmp_path / "run", tmp_path / "cache")
    train(cfg)
    assert not (tmp_path / "run" / "plots").exists() and not (tmp_path / "run" / "report.md").exists()


def test_callback_state_survives_weights_only_load(tmp_path):
    from lmforge.callbacks.plots import Plots

    cb = Plots(tmp_path / "plots")
    cb.history["train"] = {"step": [1, 2], "loss": [0.9, 0.8]}
    cb.history["val"] = [{"step": 2, "epoch": 0, "val/loss": 0.7}]
    torch.save({"state": cb.state_dict()}, tmp_path / "s.pt")
    other = Plots(tmp_path / "plots")
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True)["state"])
    assert other.history == cb.history


# -- sweeps ------------------------------------------------------------------------------------------

def _fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None = None, error: str | None = None,
              metric: str = "val/loss", mode: str = "min") -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"optimized_metric": metric, "task": {"mode": mode}}), job / "config.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "report.md").write_text("# job\n")
    if error is not None:
        (job / "error.txt").write_text(error + "\n")


def _table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]


def test_sweep_report_ranks_jobs_best_first_and_keeps_failed_ones(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_job(sweep, 0, ["model=bert", "optimizer.lr=0.001"], {"val/loss": 0.52, "test/score": 0.7, "time/total_sec": 12})
    _fake_job(sweep, 1, ["model=bert", "optimizer.lr=0.002"], {"val/loss": 0.31, "test/score": 0.8})
    _fake_job(sweep, 2, ["model=bert", "optimizer.lr=-1"], error="ValueError: Invalid learning rate: -1")
    _fake_job(sweep, 3, ["model=bert", "optimizer.lr=0.004"], {"val/loss": 0.44})
    _fake_job(sweep, 4, ["model=bert", "optimizer.lr=0.008"])  # never wrote metrics.json
    path = write_sweep_report(sweep, final=True)
    text = path.read_text()
    rows = _table(text)
    assert [r[1] for r in rows] == ["1", "3", "0", "2", "4"]  # best (lowest val/loss) first, failed ones last
    assert [r[0] for r in rows] == ["1", "2", "3", "", ""]
    assert rows[0][2] == "0.002" and rows[0][3] == "0.31" and rows[0][4] == "0.8"
    assert rows[3][-2].startswith("failed: ValueError: Invalid learning rate")
    assert rows[4][-2].startswith("failed: no metrics.json")
    assert "Every job: `model=bert`" in text and "(lower is better)" in text
    assert "python train.py model=bert optimizer.lr=0.002" in text
    assert "[1](1/report.md)" in text
    assert_picture(sweep / "plots" / "sweep.png", min_bytes=5000)
    # while the sweep runs, a job without files is running, not failed
    assert read_job(sweep / "4", 4, None, "max", final=False).status == "running"


def test_sweep_ranking_follows_each_direction():
    from lmforge.reports.sweep_report import Job

    jobs = [Job(0, Path("0"), value=0.5, mode="max"), Job(1, Path("1"), value=0.9, mode="max"),
            Job(2, Path("2"), status="failed")]
    assert [j.num for j in rank_jobs(jobs)] == [1, 0, 2]


def test_optuna_pictures_and_a_note_when_importances_cannot_be_drawn(tmp_path):
    import optuna

    from hydra_plugins.lmforge_optuna.sweeper import write_optuna_pictures

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("lr", 1e-5, 1e-2, log=True) - 1e-3) ** 2 + t.suggest_float("w", 0, 1) * 1e-7,
                   n_trials=1)
    one = write_optuna_pictures(study, tmp_path / "one")
    assert "needs 2 or more completed trials" in one["optuna_importances"]
    assert_picture(Path(one["optuna_history"]), min_bytes=5000)
    study.optimize(lambda t: t.suggest_float("lr", 1e-5, 1e-2, log=True) + t.suggest_float("w", 0, 1), n_trials=3)
    out = write_optuna_pictures(study, tmp_path / "four")
    for name in ("optuna_history", "optuna_importances"):
        assert_picture(tmp_path / "four" / f"{name}.png", min_bytes=5000)
        assert out[name] == str(tmp_path / "four" / f"{name}.png")
    import matplotlib

    assert matplotlib.rcParams["axes.facecolor"] == "white"  # optuna's ggplot style did not stay behind


def _sweep(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", "-m", *args, f"paths.cache_dir={tmp_path / 'cache'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_grid_sweep_writes_its_report_even_when_a_job_fails(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep([*TINY, "trainer.max_epochs=1", "data.max_train_samples=96", "data.max_eval_samples=64",
                   "predict.texts=null", "export=false", "logger=none", "task.monitor=val/loss", "task.mode=min",
                   "optimizer.lr=1e-3,3e-3,-1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode != 0  # the basic sweeper stops at the failed job, after the batch
    text = (sweep / "sweep_report.md").read_text()
    rows = _table(text)
    assert len(rows) == 3
    done = [float(r[3]) for r in rows if r[0]]
    assert len(done) == 2 and done == sorted(done)  # val/loss, lower is better: best first
    assert rows[-1][2] == "-1" and rows[-1][-2].startswith("failed: ") and "learning rate" in rows[-1][-2]
    assert (sweep / "2" / "error.txt").is_file()
    assert_picture(sweep / "plots" / "sweep.png", min_bytes=5000)
    for job in ("0", "1"):
        assert (sweep / job / "report.md").is_file() and (sweep / job / "plots" / "loss.png").is_file()


@pytest.mark.slow
def test_optuna_sweep_report_has_history_and_importances(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(["hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.storage=null", *TINY,
                   "trainer.max_epochs=1", "data.max_train_samples=96", "data.max_eval_samples=64",
                   "predict.texts=null", "export=false", "logger=none", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (sweep / "sweep_report.md").read_text()
    assert len(_table(text)) == 3
    assert "## Optuna study" in text
    for name in ("optuna_history", "optuna_importances", "sweep"):
        assert f"plots/{name}.png" in text
        assert_picture(sweep / "plots" / f"{name}.png", min_bytes=5000)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.pictures.optuna_importances.endswith("optuna_importances.png")


def test_the_end_of_training_draws_nothing_the_last_validation_drew(tmp_path):
    """A run whose last validation came after its last step has no new point at the end: no second drawing
    (0.6 s of CPU each), unless an image logger still wants the curves; a new point is drawn again."""
    from types import SimpleNamespace

    from lmforge.callbacks.plots import Plots

    cb = Plots(tmp_path / "plots", min_interval_s=0)
    drawn = []
    cb._draw = lambda trainer, module, stage, curves, log_task, log_curves: (  # noqa: E731
        drawn.append(stage), setattr(cb, "_drawn", cb._shape()))
    trainer = SimpleNamespace(fast_dev_run=False, sanity_checking=False, global_step=3, current_epoch=0,
                              is_global_zero=True, loggers=[], optimizers=[], log_every_n_steps=1,
                              callback_metrics={"val/accuracy": torch.tensor(0.5)})
    cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.7)}, None, 0)
    cb.on_validation_end(trainer, None)
    assert drawn == ["val"]
    cb.on_train_end(trainer, None)
    assert drawn == ["val"]  # nothing new since
    trainer.loggers = [type("TensorBoardLogger", (), {})()]
    cb.on_train_end(trainer, None)
    assert drawn == ["val", "val"]  # the curves go to TensorBoard once, at the end
    trainer.loggers, trainer.global_step = [], 4
    cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.6)}, None, 0)
    cb.on_train_end(trainer, None)
    assert drawn == ["val", "val", "val"]  # a step after the last validation: drawn
