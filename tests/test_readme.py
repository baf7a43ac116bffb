"""Every command the README shows works as written.

The commands are read from the README's ```bash blocks and run through the shell, in README order,
in a fresh copy of the project (its tracked files, with ``../shared`` beside it as in a checkout), with
default paths: nothing is passed but what the README says, followed only by overrides appended at the
end that shrink the run (fewer steps, one value of a swept key, one Optuna trial). Files the commands
name as the user's own (``train.csv``, ``corpus/*.txt``, ...) are written into the copy first; a
``<timestamp>`` placeholder becomes the first run of that task an earlier command made (for text
classification, the main job's run).

Commands this machine cannot run are listed with their reason (no GPU, no cluster, no network, the
installation and test commands that CI runs itself); the test fails if the README gains a command
that is neither run nor listed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA

README = ROOT / "README.md"

# why a command is not run here (checked in README order; the first match wins)
NOT_HERE = [
    (r"accelerator=gpu|strategy=deepspeed", "needs CUDA GPUs (none on this machine)"),
    (r"^torchrun |^srun |hydra/launcher=slurm", "needs a multi-node cluster / SLURM"),
    (r"data=hub", "needs the Hugging Face Hub (no network here)"),
    (r"s3://|gs://", "needs object storage (no network here)"),
    (r"^pip install .*python -m pytest|^python -m pytest", "the test suite itself (CI runs it)"),
    (r"^(?:[A-Z_]+=\S+ )*python benchmarks/", "a benchmark: minutes of timed runs, reported in benchmarks/README.md"),
    (r"^bash benchmarks/gpu\.sh", "the GPU benchmark (its --dry-run runs in tests/test_benchmarks.py)"),
]
# appended to every command: a short run (the run's own settings stay, these only shorten it)
SHRINK = ["trainer.max_steps=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
          "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "extras.print_config=false"]
SHRINK_EVAL: list[str] = []


def readme_commands() -> list[str]:
    text = README.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(_strip_comment(line))
    return out


def _strip_comment(line: str) -> str:
    """The command without its trailing ``# comment`` (a # inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip()
    return line


def why_not_here(cmd: str) -> str | None:
    for pattern, why in NOT_HERE:
        if re.search(pattern, cmd):
            return why
    return None


def shrink(cmd: str) -> list[str]:
    """Overrides appended to ``cmd``: fewer steps, one value of each swept key, one trial."""
    words = shlex.split(cmd)
    extra = []
    if "eval.py" in cmd:
        return extra
    extra += SHRINK
    if ("data=sst2" in cmd or "experiment=sst2" in cmd or "experiment=stsb" in cmd or "data=local" in cmd
            or "experiment=conll2003" in cmd or "experiment=squad" in cmd or "experiment=multi30k" in cmd
            or "experiment=samsum" in cmd):
        extra += ["data.max_train_samples=64", "data.max_eval_samples=32"]
    if "data=tinyshakespeare" in cmd:
        extra += ["data.max_eval_blocks=16"]
    if "-m" in words or "hparams_search=optuna" in cmd:
        for w in words:  # one value of each swept key
            m = re.fullmatch(r"([\w./]+)=([^=()]*,[^=()]*)", w)  # a=1,2 sweeps; interval(0,0.1) is a range
            if m and not w.startswith("hydra"):
                extra.append(f"{m.group(1)}={m.group(2).split(',')[0]}")
        if "hparams_search=optuna" in cmd:
            extra += ["hydra.sweeper.n_trials=1"]
            if "max_trials" in cmd:
                extra += ["hydra.sweeper.max_trials=1"]
    return extra


def write_user_files(root: Path) -> None:
    """The files the README's commands name as the user's own."""
    import random

    rng = random.Random(0)
    good, bad = ["a lovely, moving film", "great fun", "superb acting"], ["a dull mess", "boring and slow", "awful"]
    rows = [(rng.choice(good), "positive") if i % 2 else (rng.choice(bad), "negative") for i in range(120)]
    for name, part in (("train.csv", rows[:80]), ("dev.csv", rows[80:100]), ("test.csv", rows[100:])):
        (root / name).write_text("text,label\n" + "".join(f"\"{t}\",{lab}\n" for t, lab in part))
    (root / "reviews.jsonl").write_text("".join(json.dumps({"review": t, "stars": 5 if lab == "positive" else 1}) + "\n"
                                                for t, lab in rows))
    (root / "pairs.tsv").write_text("premise\thypothesis\tlabel\n" + "".join(
        f"{t}\t{u}\t{i % 3}\n" for i, ((t, _), (u, _)) in enumerate(zip(rows, reversed(rows)))))
    (root / "texts.txt").write_text("I really enjoyed this film.\nWhat a waste of time.\n")
    tales = (ROOT / "src" / "lmforge" / "samples" / "tales" / "train.txt").read_text()
    (root / "corpus").mkdir(exist_ok=True)
    half = len(tales) // 2
    (root / "corpus" / "part1.txt").write_text(tales[:half])
    (root / "corpus" / "part2.txt").write_text(tales[half:])
    (root / "corpus.txt").write_text(tales)
    # NER: the newswire sample as the user's CoNLL files, and as jsonl with integer tags
    news = ROOT / "src" / "lmforge" / "samples" / "newswire"
    for split, name in (("train", "train.conll"), ("validation", "dev.conll"), ("test", "test.conll")):
        shutil.copy(news / f"{split}.txt", root / name)
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    records, words = [], []
    for line in (news / "train.txt").read_text().splitlines() + [""]:
        if line.strip() and not line.startswith("-DOCSTART-"):
            words.append(line.split())
        elif words:
            records.append({"tokens": [w[0] for w in words], "ner_tags": [names.index(w[-1]) for w in words]})
            words = []
    (root / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def first_run(root: Path, task: str) -> Path:
    """The first run of ``task`` the README's commands made (for text classification: the main job)."""
    # by name: the run folders are named by their start time (an eval.py that writes into a run changes its mtime)
    runs = sorted((p for p in (root / "logs" / task / "runs").glob("*") if (p / "checkpoints").is_dir()),
                  key=lambda p: p.name)
    assert runs, f"no earlier run of {task} to stand for <timestamp>"
    return runs[0]


def fill_placeholders(cmd: str, root: Path, env: dict) -> str:
    for var, value in env.items():
        cmd = cmd.replace(f"${var}", value)

    def sub(m: re.Match) -> str:
        task = m.group(1)
        task = "text_classification" if task == "<task>" else task
        return str(first_run(root, task).relative_to(root))

    return re.sub(r"logs/([\w<>]+)/runs/<timestamp>", sub, cmd)


def resumed_tasks(cmds: list[str]) -> set[str]:
    """The log folders a ``ckpt_path=last`` among ``cmds`` may resume from (``task=``/``experiment=``, else the default)."""
    out = set()
    for c in cmds:
        if re.search(r"ckpt_path=last\b", c):
            m = re.search(r"\b(?:experiment|task)=(\w+)", c)
            out.add(m.group(1) if m else "text_classification")
    return out


def prune_weights(root: Path, keep_runs: set[Path], keep_tasks: set[str]) -> int:
    """Delete the weights (checkpoints, exported model files) of runs no later README command can reach.

    Kept: ``keep_runs`` (each task's first run, which ``<timestamp>`` stands for) and every run of the tasks in
    ``keep_tasks`` (a later ``ckpt_path=last`` picks among them). A MiniLM run holds about 350 MB of weights; the
    README's hundred runs would otherwise fill 20 GB of the test machine's disk. Only files inside ``checkpoints/``
    and ``export/`` go, so the run folders (and their modification times) stay as the commands left them.
    Returns the bytes freed.
    """
    freed = 0
    for run in [*root.glob("logs/*/runs/*"), *root.glob("logs/*/multiruns/*/*")]:
        if not run.is_dir() or run in keep_runs or (run.parent.name == "runs" and run.parent.parent.name in keep_tasks):
            continue
        big = [*run.glob("checkpoints/*.ckpt"), *run.glob("export/*.safetensors"), *run.glob("export/*.bin")]
        for f in big:
            if f.is_dir():  # an FSDP2 sharded checkpoint folder
                freed += sum(x.stat().st_size for x in f.rglob("*") if x.is_file())
                shutil.rmtree(f)
            else:
                freed += f.stat().st_size if f.stat().st_nlink == 1 else 0
                f.unlink()
    return freed


def first_runs(root: Path) -> set[Path]:
    """Each task's first run (the one ``<timestamp>`` stands for) as things stand now."""
    out = set()
    for runs in root.glob("logs/*/runs"):
        try:
            out.add(first_run(root, runs.parent.name))
        except AssertionError:  # no run of this task has a checkpoints folder yet
            pass
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the project's tracked files, with ../shared beside it when the checkout has one."""
    base = tmp_path_factory.mktemp("clone")
    root = base / "lmforge"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_symlink():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), root / f)
        elif src.is_file():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / f)
    if SHARED_DATA.is_dir():
        (base / "shared").mkdir()
        os.symlink(SHARED_DATA, base / "shared" / "data")
    write_user_files(root)
    return root


def test_pruning_keeps_what_later_readme_commands_reach(tmp_path):
    """The README test deletes weights as it goes: never those of a first run or of a task a later
    ``ckpt_path=last`` resumes; always those of other runs and of sweeps."""
    def run(task: str, name: str, sweep: bool = False) -> Path:
        d = tmp_path / "logs" / task / ("multiruns" if sweep else "runs") / name
        (d / "checkpoints").mkdir(parents=True)
        (d / "export").mkdir()
        for f in ("checkpoints/last.ckpt", "export/model.safetensors", "export/config.json"):
            (d / f).write_bytes(b"x" * 100)
        return d

    first = run("text_classification", "2026-01-01_00-00-01")
    second = run("text_classification", "2026-01-01_00-00-09")
    os.utime(first)  # touched later (an eval.py writing into it): still the first by its name
    lm = [run("causal_lm", "2026-01-01_00-00-02"), run("causal_lm", "2026-01-01_00-00-03")]
    sweep = run("text_classification", "2026-01-01_00-00-05/0", sweep=True)
    later = ["python train.py task=causal_lm ckpt_path=last", "python eval.py run=logs/causal_lm/runs/<timestamp>"]
    assert resumed_tasks(later) == {"causal_lm"}
    assert resumed_tasks(["python train.py ckpt_path=logs/x/last.ckpt"]) == set()
    assert first_runs(tmp_path) == {first, lm[0]}
    freed = prune_weights(tmp_path, first_runs(tmp_path), resumed_tasks(later))
    assert freed == 400
    for d in (first, *lm):
        assert (d / "checkpoints" / "last.ckpt").is_file() and (d / "export" / "model.safetensors").is_file()
    for d in (second, sweep):
        assert not list(d.glob("checkpoints/*.ckpt")) and not (d / "export" / "model.safetensors").exists()
        assert (d / "export" / "config.json").is_file() and (d / "checkpoints").is_dir()


def test_every_readme_command_is_run_or_has_a_reason():
    cmds = readme_commands()
    assert len(cmds) > 30
    for c in cmds:
        runnable = re.match(r"(?:[A-Z_]+=\S+ )*(?:python (?:train|eval)\.py|lmforge-prepare )", c) \
            or "&& python train.py" in c or re.fullmatch(r"[A-Z_]+=\S+", c)
        assert runnable or why_not_here(c), f"README command neither run by this test nor listed: {c}"


@pytest.mark.slow
def test_readme_commands_work_as_written(project):
    env_vars: dict[str, str] = {}
    ran, skipped, seconds = [], [], []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LMFORGE_DATA_DIR", None)  # default paths: ../shared/data beside the copy
    cmds = readme_commands()
    freed = 0
    for i, cmd in enumerate(cmds):
        why = why_not_here(cmd)
        if why:
            skipped.append((cmd, why))
            continue
        if re.fullmatch(r"[A-Z_]+=\S+", cmd):  # a shell variable the next commands use
            name, value = cmd.split("=", 1)
            env_vars[name] = fill_placeholders(value, project, env_vars)
            continue
        if "&& python train.py" in cmd:  # the install command: the package is installed; run the job
            cmd = "python train.py" + cmd.split("&& python train.py", 1)[1]
        if ("../shared/data" in cmd or "experiment=sst2" in cmd or "experiment=stsb" in cmd
                or "experiment=conll2003" in cmd or "experiment=squad" in cmd or "experiment=multi30k" in cmd
                or "experiment=samsum" in cmd or "tinyshakespeare" in cmd) \
                and not SHARED_DATA.is_dir():
            skipped.append((cmd, "../shared/data is not beside this checkout"))
            continue
        full = fill_placeholders(cmd, project, env_vars)
        if full.startswith("lmforge-prepare "):  # the console script of the installed package, as the clone's module
            full = f"{shlex.quote(sys.executable)} -m lmforge.prepare " + full[len("lmforge-prepare "):]
        else:
            full = full.replace("python ", f"{shlex.quote(sys.executable)} ", 1)
            full += "".join(" " + shlex.quote(o) for o in shrink(cmd))
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "-c", full], cwd=project, capture_output=True, text=True, env=env, timeout=900)
        seconds.append((time.perf_counter() - t0, cmd))
        assert proc.returncode == 0, (f"README command failed ({proc.returncode}): {cmd}\nran: {full}\n"
                                      f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
        ran.append(cmd)
        # a task's first run (by folder name, its start time) stays first once it exists: kept from then on
        freed += prune_weights(project, first_runs(project), resumed_tasks(cmds[i + 1:]))
    print(f"ran {len(ran)} README commands in {sum(t for t, _ in seconds):.0f} s "
          f"({freed / 2**30:.1f} GiB of unreachable runs' weights deleted on the way); the slowest:")
    for t, c in sorted(seconds, reverse=True)[:15]:
        print(f"  {t:6.1f} s  {c}")
    print("not here: " + "; ".join(f"{c} ({w})" for c, w in skipped))
    assert len(ran) >= 30, ran


def test_unknown_option_message_matches_the_readme(tmp_path):
    """The README quotes what `model=bertt` and `data.batchsize=8` print: check it against the program."""
    text = README.read_text()
    m = re.search(r"`python train.py model=bertt` says `(.*?)` and lists `(.*?)`", text)
    assert m, "the README no longer quotes the model=bertt message"
    proc = subprocess.run([sys.executable, "train.py", "model=bertt"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and m.group(1) in proc.stderr + proc.stdout
    listed = [x.strip() for x in m.group(2).split(",")]
    options = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
    assert listed == options, (listed, options)
    m2 = re.search(r"`python train.py data.batchsize=8` says `(.*?)`", text)
    proc = subprocess.run([sys.executable, "train.py", "data.batchsize=8"], cwd=ROOT, capture_output=True, text=True)
    assert m2 and m2.group(1) in proc.stderr + proc.stdout


def test_group_options_in_the_readme_table_are_the_config_files():
    """Each row of the README's group table names exactly the options configs/<group>/ holds."""
    text = README.read_text()
    for group in ("task", "data", "model", "strategy", "precision", "accelerator", "optimizer", "scheduler",
                  "callbacks", "logger", "debug", "experiment", "hparams_search", "distill"):
        row = re.search(rf"^\| `{re.escape(group)}` \| (.*?) \|", text, re.M)
        assert row, f"no README row for {group}"
        named = set(re.findall(r"`([\w\-]+)`", row.group(1)))
        files = {p.stem for p in (ROOT / "configs" / group).glob("*.yaml") if not p.stem.startswith("_")}
        assert files <= named, (group, files - named)


# the files behind each bad-input line of the README, and the overrides that read them
BAD_INPUT = {
    "data/trian.csv": ({}, ["data.train_file=data/trian.csv"]),
    "'review' is not a column": ({"data/train.tsv": "sentence\tlabel\n" + "".join(f"ok fine {i}\t{i % 2}\n"
                                                                             for i in range(10))},
                                 ["data.train_file=data/train.tsv", "data.text_column=review"]),
    "val.jsonl:2": ({"data/tr.jsonl": '{"text": "a", "label": "neg"}\n{"text": "b", "label": "pos"}\n' * 3,
                     "data/val.jsonl": '{"text": "a", "label": "neg"}\n{"text": "b", "label": "neutral"}\n'},
                    ["data.train_file=data/tr.jsonl", "data.validation_file=data/val.jsonl"]),
    "train2.tsv:3": ({"data/train2.tsv": "text\tlabel\nfine\tpos\n  \tneg\n"}, ["data.train_file=data/train2.tsv"]),
    "train.jsonl:2:28": ({"data/train.jsonl": '{"text": "a", "label": "neg"}\n{"text": "bad", "label": 0 "x"}\n'},
                         ["data.train_file=data/train.jsonl"]),
    "train3.tsv:3": ({"data/train3.tsv": "text\tlabel\na\t1\nb\t0\tx\n"}, ["data.train_file=data/train3.tsv"]),
}


def check_bad_input_block(marker: str, table: dict, base: list[str], make_cfg, tmp_path, monkeypatch) -> None:
    """Each ``error:`` line of the README block after ``marker`` is what train() raises on the table's files."""
    from lmforge.train import train

    text = README.read_text()
    block = text[text.index(marker):]
    block = block[block.index("```\n") + 4: block.index("\n```", block.index("```\n") + 4)]
    lines = [line for line in block.splitlines() if line.startswith("error: ")]
    assert len(lines) == len(table)
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    monkeypatch.chdir(project)
    for line in lines:
        key = next(k for k in table if k in line)
        files, overrides = table[key]
        for name, content in files.items():
            (project / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            train(make_cfg([*base, *overrides], name=re.sub(r"\W", "_", key)))
        assert f"error: {e.value}" == line.replace("/home/me/proj", str(project)), (line, str(e.value))


def test_the_bad_input_messages_in_the_readme_are_what_lmforge_prints(make_cfg, tmp_path, monkeypatch):
    check_bad_input_block("Bad input stops the run", BAD_INPUT, ["data=local", "model=bert", "model/size=tiny"],
                          make_cfg, tmp_path, monkeypatch)


# the files behind each line of the README's NER bad-input block
NER_BAD_INPUT = {
    "short.conll:6": ({"data/short.conll": "EU NNP B-ORG\nrejects VBZ O\nGerman JJ B-MISC\n\nPeter NNP B-PER\nBlackburn\n"},
                      ["data.train_file=data/short.conll", "data.tag_column=2"]),
    "tags.conll:3": ({"data/tags.conll": "EU B-ORG\nrejects O\nGerman B_MISC\n\nPeter B-PER\nspoke O\n"},
                     ["data.train_file=data/tags.conll"]),
    "strict.conll:5": ({"data/strict.conll": "EU B-ORG\nrejects O\n\nthe O\nPeter I-PER\nBlackburn I-PER\n"},
                       ["data.train_file=data/strict.conll", "data.tag_scheme=iob2"]),
    "empty.jsonl:2": ({"data/empty.jsonl": '{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}\n'
                                           '{"tokens": ["Peter", "Blackburn"], "ner_tags": []}\n'},
                      ["data.train_file=data/empty.jsonl"]),
    "lengths.jsonl:2": ({"data/lengths.jsonl": '{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}\n'
                                               '{"tokens": ["Peter", "Blackburn", "spoke"], "ner_tags": ["B-PER", "I-PER"]}\n'},
                        ["data.train_file=data/lengths.jsonl"]),
    "latin1.conll:4": ({"data/latin1.conll": b"EU B-ORG\nrejects O\n\nM\xfcller B-PER\n"},
                       ["data.train_file=data/latin1.conll"]),
}


def test_the_ner_bad_input_messages_in_the_readme_are_what_lmforge_prints(make_cfg, tmp_path, monkeypatch):
    check_bad_input_block("Bad input in NER files stops the run", NER_BAD_INPUT,
                          ["task=token_classification", "data=local", "model=bert", "model/size=tiny"],
                          make_cfg, tmp_path, monkeypatch)


_QA_PASSAGE = "Mara Quell designed the Tessa bridge in 1871."


def _squad_json(qas, context=_QA_PASSAGE):
    return json.dumps({"version": "1.1", "data": [{"title": "Bridges", "paragraphs": [{"context": context, "qas": qas}]}]})


_QA_OK = {"text": "Mara Quell", "answer_start": 0}
# the files behind each line of the README's question-answering bad-input block
QA_BAD_INPUT = {
    "bridges.json": ({"data/bridges.json": _squad_json([
        {"id": "q1", "question": "Who designed it?", "answers": [_QA_OK]},
        {"id": "q2", "question": "When was it built?", "answers": [{"text": "1871", "answer_start": 38}]}])},
        ["data.train_file=data/bridges.json"]),
    "unanswered.json": ({"data/unanswered.json": _squad_json([
        {"id": "q1", "question": "Who designed it?", "answers": [_QA_OK]},
        {"id": "q2", "question": "Who paid for it?", "answers": []}])},
        ["data.train_file=data/unanswered.json", "data.validation_file=data/unanswered.json"]),
    "nocontext.json": ({"data/nocontext.json": json.dumps({"version": "1.1", "data": [{"title": "Bridges", "paragraphs": [
        {"qas": [{"id": "q1", "question": "Who designed it?", "answers": [_QA_OK]}]}]}]})},
        ["data.train_file=data/nocontext.json"]),
    "questions.jsonl:2": ({"data/questions.jsonl": "".join(json.dumps(r) + "\n" for r in [
        {"id": "q1", "question": "Who designed it?", "context": "Mara Quell designed it.",
         "answers": {"text": ["Mara Quell"], "answer_start": [0]}},
        {"id": "q2", "context": "Mara Quell designed it.", "answers": {"text": ["Mara Quell"], "answer_start": [0]}}])},
        ["data.train_file=data/questions.jsonl"]),
    "empty.json": ({"data/empty.json": _squad_json([{"id": "q1", "question": "Who designed it?", "answers": []}], context="")},
                   ["data.train_file=data/empty.json"]),
    "reviews.json": ({"data/reviews.json": json.dumps([{"text": "a fine bridge", "label": 1}])},
                     ["data.train_file=data/reviews.json"]),
}


def test_the_question_answering_bad_input_messages_in_the_readme_are_what_lmforge_prints(make_cfg, tmp_path, monkeypatch):
    check_bad_input_block("Bad input in question-answering files stops the run", QA_BAD_INPUT,
                          ["task=question_answering", "data=local", "model=bert", "model/size=tiny"],
                          make_cfg, tmp_path, monkeypatch)


def _chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def _jsonl(*rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


_HI = _chat(("user", "hi"), ("assistant", "hello"))
# the files behind each line of the README's instruction-tuning bad-input block
CHAT_BAD_INPUT = {
    "roles.jsonl:2": ({"data/roles.jsonl": _jsonl(_HI, _chat(("robot", "beep"), ("assistant", "hello")))},
                      ["data.train_file=data/roles.jsonl"]),
    "noanswer.jsonl:2": ({"data/noanswer.jsonl": _jsonl(_HI, _chat(("user", "hi")))}, ["data.train_file=data/noanswer.jsonl"]),
    "twice.jsonl:1": ({"data/twice.jsonl": _jsonl(_chat(("user", "hi"), ("user", "are you there?"), ("assistant", "yes")))},
                      ["data.train_file=data/twice.jsonl"]),
    "empty.jsonl:1": ({"data/empty.jsonl": _jsonl(_chat(("user", "hi"), ("assistant", " ")))}, ["data.train_file=data/empty.jsonl"]),
    "mixed.jsonl:2": ({"data/mixed.jsonl": _jsonl(_HI, {"instruction": "Say hi", "input": "", "output": "hi"})},
                      ["data.train_file=data/mixed.jsonl"]),
    "unknown.jsonl:1": ({"data/unknown.jsonl": _jsonl({"question": "x", "answer": "y"})}, ["data.train_file=data/unknown.jsonl"]),
    "system.jsonl:1": ({"data/system.jsonl": _jsonl(_chat(("user", "hi"), ("assistant", "hello"), ("system", "Be brief."),
                                                          ("user", "ok"), ("assistant", "ok")))},
                       ["data.train_file=data/system.jsonl"]),
}


def test_the_instruction_tuning_bad_input_messages_in_the_readme_are_what_lmforge_prints(make_cfg, tmp_path, monkeypatch):
    check_bad_input_block("Bad input in chat and instruction files stops the run", CHAT_BAD_INPUT,
                          ["task=instruction_tuning", "data=local"], make_cfg, tmp_path, monkeypatch)
