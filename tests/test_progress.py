"""Progress of the waits outside training (lmforge.utils.progress): one line per stage when output is not a
terminal, a rich bar with counts and a time estimate in one, nothing on other ranks or in DataLoader workers."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from lmforge.utils import progress
from lmforge.utils.errors import ConfigError
from lmforge.utils.progress import Stage, stage, track

from conftest import ROOT, run_script

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -- not a terminal: one line per stage ---------------------------------------------------------------

def test_not_a_terminal_prints_one_line_per_stage_with_counts(capsys):
    with stage("tokenizing train split (train.csv)", total=5000, unit="rows") as s:
        for _ in range(50):
            progress.advance(100)  # the innermost open stage: what a task's encoding loop calls
        assert progress.current() is s
    assert progress.current() is None
    progress.advance(7)  # no open stage: nothing happens
    out = capsys.readouterr().out
    assert lines(out) == [out.strip()]
    assert re.fullmatch(r"tokenized train split \(train\.csv\): 5,000 rows in \d+\.\d s( \([\d,.]+ rows/s\))?",
                        out.strip()), out


def test_unknown_total_partial_counts_fractions_and_a_failed_stage(capsys):
    # streaming: no total; the count is what went by
    assert sum(1 for _ in track((x for x in range(12345)), "counting documents in corpus.txt", unit="documents")) == 12345
    # a loop that passes twice over the rows advances half a row each time: the counts add up exactly
    with stage("tokenizing test split (pairs.tsv)", total=3, unit="pairs") as s:
        for _ in range(2):
            for _ in range(3):
                s.advance(0.5)
    # work that stops early says how far it got
    with stage("tokenizing validation split (valid.txt)", total=5000, unit="documents") as s:
        s.advance(2048)
    # a stage that fails prints nothing (the error speaks)
    with pytest.raises(ValueError):
        with stage("tokenizing broken split", total=10, unit="rows"):
            raise ValueError("bad row")
    got = lines(capsys.readouterr().out)
    assert len(got) == 3, got
    assert got[0].startswith("counted documents in corpus.txt: 12,345 documents in ")
    assert got[1].startswith("tokenized test split (pairs.tsv): 3 pairs in ")
    assert got[2].startswith("tokenized validation split (valid.txt): 2,048 of 5,000 documents in ")
    assert progress.current() is None


def test_a_consumer_that_stops_early_still_gets_its_line(capsys):
    for i, _ in enumerate(track(range(1000), "reading rows", unit="rows")):
        if i == 99:
            break
    out = capsys.readouterr().out
    assert lines(out) == [out.strip()]
    assert out.startswith("read rows: 100 of 1,000 rows in ")  # the 100th was read when the loop stopped


def test_modes_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "off")
    with stage("tokenizing x", total=1) as s:
        s.advance()
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(progress.ENV, "sideways")
    with pytest.raises(ConfigError, match="LMFORGE_PROGRESS=sideways: expected one of auto, rich, plain, off"):
        stage("tokenizing x").start()


# -- a terminal: a rich bar ----------------------------------------------------------------------------

def test_a_terminal_shows_a_bar_with_counts_rate_and_time_left():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with stage("tokenizing train split (train.csv)", total=100, unit="rows", console=console) as s:
        assert s.mode == "rich"
        for _ in range(8):
            time.sleep(0.12)  # longer than the redraw interval: every step is drawn
            s.advance(10)
    out = ANSI.sub("", buf.getvalue()).replace("\r", "\n")
    bars = [ln for ln in out.splitlines() if ln.startswith("tokenizing train split (train.csv) ")]
    assert bars, out
    assert any("/100 rows" in ln for ln in bars)
    assert any(re.search(r"[\d,.]+/s \d+:\d\d eta \d+:\d\d", ln) for ln in bars), bars  # rate, elapsed, time left
    assert "━" in out
    assert lines(out)[-1].startswith("tokenized train split (train.csv): 80 of 100 rows in ")


def test_stages_inside_one_another_share_one_bar_display():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with stage("tokenizing outer", total=2, unit="splits", console=console) as outer:
        with stage("packing inner", total=4, unit="documents", console=console) as inner:
            assert inner._display is outer._display  # one live display, two tasks
            inner.advance(4)
        outer.advance(2)
    got = [ln for ln in lines(ANSI.sub("", buf.getvalue()).replace("\r", "\n")) if ln[0].isalpha()]
    assert [ln.split(":")[0] for ln in got if ":" in ln and " in " in ln] == ["packed inner", "tokenized outer"]


def run_in_pty(code: str, timeout: float = 60) -> str:
    """Run ``python -c code`` with stdout and stderr on a pseudo-terminal (as in a user's terminal); its output."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40"}
    env.pop(progress.ENV, None)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL,
                            cwd=ROOT, env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_real_terminal_gets_a_bar_also_beneath_another_live_display():
    code = """
import time
from rich.progress import Progress
from lmforge.utils.progress import stage
with stage("tokenizing train split (t.csv)", total=60, unit="rows") as s:
    assert s.mode == "rich", s.mode
    for _ in range(6):
        time.sleep(0.12); s.advance(10)
with Progress() as training:  # another live display, as Lightning's bar during validation
    training.add_task("Epoch 0", total=10)
    with stage("generating validation samples", total=4, unit="prompts") as g:
        for _ in range(4):
            time.sleep(0.12); g.advance(1)
print("done")
"""
    out = ANSI.sub("", run_in_pty(code)).replace("\r", "\n")
    assert re.search(r"tokenizing train split \(t\.csv\) .*\d+/60 rows", out), out
    assert re.search(r"generating validation samples .*\d/4 prompts", out), out
    assert "tokenized train split (t.csv): 60 rows in " in out
    assert "generated validation samples: 4 prompts in " in out
    assert "Epoch 0" in out and "done" in out


# -- where nothing is shown ------------------------------------------------------------------------------

def test_other_ranks_print_nothing(monkeypatch, capsys):
    from lightning.pytorch.utilities import rank_zero_only  # what a Trainer sets on every rank

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with stage("tokenizing train split (x)", total=3, unit="rows") as s:
        s.advance(3)
    assert s.mode == "off"
    assert list(track(range(3), "counting")) == [0, 1, 2]
    assert capsys.readouterr().out == ""


def test_a_process_started_as_rank_1_prints_nothing():
    # a launched rank before Lightning is loaded: the environment says which rank it is
    code = ("from lmforge.utils.progress import stage\n"
            "with stage('tokenizing x', total=3, unit='rows') as s: s.advance(3)\nprint('mode', s.mode)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "RANK": "1", "LOCAL_RANK": "1"}).stdout
    assert out == "mode off\n"


class _StagedDataset(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        with stage("tokenizing inside a worker", total=1, unit="rows") as s:
            s.advance()
        return i


def test_dataloader_workers_print_nothing(capfd):
    batches = [b.tolist() for b in DataLoader(_StagedDataset(), batch_size=1, num_workers=1)]
    assert batches == [[0], [1]]
    assert "inside a worker" not in capfd.readouterr().out
    _StagedDataset()[0]  # the same stage in the main process prints its line
    assert capfd.readouterr().out.startswith("tokenized inside a worker: 1 rows in ")


# -- where lmforge uses it ---------------------------------------------------------------------------------

def test_qa_post_processing_advances_a_stage_by_question():
    from lmforge.tasks.question_answering.postprocess import answers_from_logits

    windows, width = 5, 12
    char = torch.arange(width).repeat(windows, 1)
    char[:, :3] = -1  # question tokens
    shown = Stage("answering questions", total=3, unit="questions", mode="off").start()
    out = answers_from_logits(torch.randn(windows, width), torch.randn(windows, width), char, char + 1,
                              torch.zeros(windows, dtype=torch.long), [0, 0, 1, 2, 2], ["x" * 20] * 3,
                              progress=shown)
    assert len(out) == 3 and shown.count == 3


def test_train_py_prints_one_line_per_stage(tmp_path):
    # a fresh cache: the tokenizer is trained and every split tokenized; output to a pipe, as in a cluster log
    proc = run_script(["train.py", "task=causal_lm", "model/size=tiny", "extras.print_config=false",
                       "trainer.max_steps=1", "trainer.val_check_interval=1", "test=false", "export=false",
                       "predict.texts=null", "task.generation.max_new_tokens=4", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}"])
    out = proc.stdout
    assert "\x1b[" not in out and "\r" not in out  # no bar, no escape codes
    summary = r"[\d,]+ {unit} in \d+\.\d s \([\d,.]+ {unit}/s\)"
    expected = {
        "trained a bpe tokenizer": rf"trained a bpe tokenizer \(8,000 tokens\): {summary.format(unit='texts')}",
        "tokenized train split": rf"tokenized train split \(train\.txt\): {summary.format(unit='documents')}",
        "tokenized validation split": rf"tokenized validation split \(validation\.txt\): {summary.format(unit='documents')}",
        "generated validation samples": rf"generated validation samples: {summary.format(unit='prompts')}",
    }
    for start, pattern in expected.items():
        found = [ln for ln in out.splitlines() if ln.startswith(start)]
        assert len(found) == 1, (start, out[-4000:])
        assert re.fullmatch(pattern, found[0]), found[0]
    assert not [ln for ln in out.splitlines() if ln.startswith(("tokenizing ", "generating ", "training a bpe"))]
