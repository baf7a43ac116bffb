"""litdata streaming for multi-node pretraining: ``lmforge-prepare`` writes chunks, ``data=litdata`` trains from
them (single process, DDP), and a resumed run continues with exactly the batches the uninterrupted run saw next.
Local paths only (an ``s3://`` folder takes the same code path inside litdata)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, compose_cfg, run_script

litdata = pytest.importorskip("litdata", reason="litdata not installed (pip install 'lmforge[litdata]')")

from lmforge.data.litdata_source import _streaming_loader_class  # noqa: E402
from lmforge.prepare import prepare  # noqa: E402
from lmforge.train import train  # noqa: E402
from lmforge.utils.errors import ConfigError, DataError  # noqa: E402

QUIET = ["extras.print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null",
         "predict.texts=null", "export=false", "test=false"]
SMALL = ["task=causal_lm", "model/size=tiny", "data.tokenizer_training.vocab_size=600"]
# a few seconds per run: short blocks, small batches, 2 validation batches
RUN = [*SMALL, *QUIET, "data=litdata", "data.block_size=32", "data.batch_size=4", "trainer.log_every_n_steps=1",
       "trainer.val_check_interval=1000", "trainer.limit_val_batches=2", "task.generation.max_new_tokens=4"]

PROBE = '''
import json, os
import lightning as L


class Blocks(L.Callback):
    """Writes, per rank, the first 8 token ids of every training block, batch by batch; saves a checkpoint
    in the middle of the run at step ``save_at`` (where ModelCheckpoint saves: after the batch, the next
    one already fetched)."""

    def __init__(self, out, save_at=None):
        self.out, self.seen, self.save_at = out, [], save_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append([row[:8].tolist() for row in batch["input_ids"]])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(os.path.join(self.out, "mid.ckpt"))

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.seen, f)
'''


@pytest.fixture(scope="module")
def chunks(tmp_path_factory, cache_dir) -> Path:
    """The embedded tales (train.txt + validation.txt) as litdata chunks, tokenizer trained by the task."""
    root = tmp_path_factory.mktemp("litdata")
    out = root / "chunks"
    prepare(compose_cfg(SMALL, root / "prep", cache_dir), str(out), chunk_bytes="64KB")
    return out


@pytest.fixture
def probe(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "probe_mod"
    folder.mkdir()
    (folder / "litdata_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _with_probe(out: Path, save_at: int | None = None) -> list[str]:
    return ["+callbacks.probe._target_=litdata_probe.Blocks", f"+callbacks.probe.out={out}",
            *([f"+callbacks.probe.save_at={save_at}"] if save_at else [])]


def _seen(folder: Path, rank: int = 0) -> list:
    return json.loads((folder / f"rank{rank}.json").read_text())


def test_prepare_writes_chunks_of_the_documents(chunks):
    from litdata import StreamingDataset, TokensLoader
    from transformers import AutoTokenizer

    from lmforge.data.text_corpus import read_documents

    meta = json.loads((chunks / "lmforge.json").read_text())
    assert (chunks / "train" / "index.json").is_file() and (chunks / "validation" / "index.json").is_file()
    assert len(list((chunks / "train").glob("chunk-*.bin"))) > 1  # 64KB chunks: the corpus spans several
    tok = AutoTokenizer.from_pretrained(chunks / "tokenizer")
    assert meta["vocab_size"] == len(tok) and meta["dtype"] == "uint16"
    sample = ROOT / "src" / "lmforge" / "samples" / "tales"
    docs = list(read_documents([sample / "train.txt"]))
    # the whole stream: every document's ids, the separator after each, in corpus order
    ds = StreamingDataset(str(chunks / "train"), item_loader=TokensLoader(block_size=1))
    stream = torch.as_tensor(np.concatenate([ds[i] for i in range(len(ds))]).astype(np.int64))
    assert len(stream) == meta["splits"]["train"]["tokens"]
    first = tok(docs[0], add_special_tokens=False)["input_ids"]
    assert stream[: len(first) + 1].tolist() == [*first, meta["separator_id"]]
    assert int((stream == meta["separator_id"]).sum()) == len(docs)
    n_val = len(list(read_documents([sample / "validation.txt"])))
    assert meta["splits"]["validation"]["tokens"] > n_val


def test_resumable_loader_state_counts_trained_batches_not_fetched(chunks):
    """A batch fetched but not trained yet (Lightning prefetches from a loader without a length) is not in the
    saved state; the state loads with torch.load(weights_only=True)."""
    import io

    from litdata import StreamingDataset, TokensLoader

    def loader(consumed=None):
        ds = StreamingDataset(str(chunks / "train"), item_loader=TokensLoader(block_size=16), shuffle=True, seed=3,
                              drop_last=True)
        return _streaming_loader_class()(ds, batch_size=4, consumed=consumed)

    trained = {"n": 0}
    first = loader(lambda: trained["n"])
    batches = []
    for b in first:
        batches.append(b)
        if len(batches) == 4:  # 4 fetched, 3 trained
            trained["n"] = 3
            state = first.state_dict()
            break
    buf = io.BytesIO()
    torch.save({"s": state}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["s"]
    again = loader()
    again.load_state_dict(state)
    it = iter(again)
    assert torch.equal(next(it), batches[3])
    assert not torch.equal(next(it), batches[3])


def test_train_from_litdata_chunks(chunks, make_cfg, probe, tmp_path):
    metrics = train(make_cfg([*RUN, f"data.input_dir={chunks}", "trainer.max_steps=3", *_with_probe(tmp_path / "seen")]))
    assert metrics["val/loss"] == pytest.approx(metrics["val/loss"]) and metrics["val/loss"] > 0
    seen = _seen(tmp_path / "seen")
    assert len(seen) == 3 and all(len(b) == 4 for b in seen)
    blocks = [tuple(r) for b in seen for r in b]
    assert len(set(blocks)) == len(blocks)  # shuffled blocks, none twice


def test_missing_chunks_say_how_to_write_them(make_cfg, tmp_path, chunks):
    with pytest.raises(DataError, match=r"data.input_dir=.*nowhere: no lmforge.json there \(no such folder\); "
                                        r"write the chunks first with lmforge-prepare"):
        train(make_cfg([*RUN, f"data.input_dir={tmp_path / 'nowhere'}", "trainer.max_steps=1"]))
    with pytest.raises(ConfigError, match=r"data.source=litdata: only the pretraining tasks \(causal_lm, masked_lm\)"):
        train(make_cfg([*QUIET, "task=text_classification", "model=bert", "model/size=tiny", "data=litdata",
                        f"data.input_dir={chunks}"]))
    with pytest.raises(ConfigError, match=r"lmforge-prepare reads text: give data=text"):
        prepare(make_cfg([*RUN, f"data.input_dir={chunks}"]), str(tmp_path / "again"))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_mid_epoch_continues_with_the_next_batches(chunks, make_cfg, probe, tmp_path, workers):
    """A run of 8 steps checkpoints at step 4 (mid-run, mid-epoch: an epoch is ~900 steps); resumed from that
    checkpoint, a run trains on exactly the blocks the uninterrupted run trained on at steps 5-8 (also with
    DataLoader workers, each streaming its own share)."""
    base = [*RUN, f"data.input_dir={chunks}", "trainer.max_steps=8", f"data.num_workers={workers}"]
    train(make_cfg([*base, *_with_probe(tmp_path / "whole", save_at=4)], name="whole"))
    ckpt = tmp_path / "whole" / "mid.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")  # plain containers only
    loader_state = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["num_samples_yielded"] == 4 * 4 and loader_state["current_epoch"] == 1
    train(make_cfg([*base, f"ckpt_path={ckpt}", *_with_probe(tmp_path / "resumed")], name="resumed"))
    whole, resumed = _seen(tmp_path / "whole"), _seen(tmp_path / "resumed")
    assert len(whole) == 8
    assert resumed == whole[4:8]


@pytest.mark.slow  # about 25 s alone, a subprocess pair: over a minute on a loaded machine
def test_ddp_two_processes_see_different_blocks(chunks, tmp_path, probe, cache_dir):
    """strategy=ddp on 2 CPU processes: litdata gives each rank its own blocks."""
    run_script(["train.py", *RUN, f"data.input_dir={chunks}", "strategy=ddp", "accelerator=cpu", "trainer.devices=2",
                "trainer.max_steps=3", *_with_probe(tmp_path / "seen"), f"paths.cache_dir={cache_dir}",
                f"hydra.run.dir={tmp_path / 'run'}"],
               env={"PYTHONPATH": os.pathsep.join([str(probe), os.environ.get("PYTHONPATH", "")])})
    r0, r1 = _seen(tmp_path / "seen", 0), _seen(tmp_path / "seen", 1)
    assert len(r0) == len(r1) == 3
    b0, b1 = {tuple(r) for b in r0 for r in b}, {tuple(r) for b in r1 for r in b}
    assert len(b0) == len(b1) == 12 and not b0 & b1


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory, cache_dir) -> Path:
    """The first 24 tales (a few data epochs in a dozen steps), 4 of them carved out for validation."""
    from lmforge.data.text_corpus import read_documents

    root = tmp_path_factory.mktemp("litdata_small")
    docs = list(read_documents([ROOT / "src" / "lmforge" / "samples" / "tales" / "train.txt"]))[:24]
    (root / "tales24.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    cfg = compose_cfg([*SMALL, "data=text", f"data.train_files={root / 'tales24.txt'}", "data.validation_fraction=0.15"],
                      root / "prep", cache_dir)
    prepare(cfg, str(root / "chunks"))
    return root / "chunks"


def test_resume_at_and_after_an_epoch_end(small_chunks, make_cfg, probe, tmp_path):
    """Checkpoints at the last batch of data epoch 1 and one batch into epoch 2 both resume with the batches
    the uninterrupted run trained on next (epoch 2 in its own new order)."""
    from litdata import StreamingDataset, TokensLoader

    per_epoch = len(StreamingDataset(str(small_chunks / "train"), item_loader=TokensLoader(block_size=64))) // 8
    assert 3 <= per_epoch <= 12, per_epoch
    steps = per_epoch + 3
    base = [*RUN, f"data.input_dir={small_chunks}", "data.block_size=64", "data.batch_size=8",
            f"trainer.max_steps={steps}"]
    train(make_cfg([*base, *_with_probe(tmp_path / "whole", save_at=per_epoch)], name="whole"))
    whole = _seen(tmp_path / "whole")
    first, second = whole[:per_epoch], whole[per_epoch: 2 * per_epoch]
    assert {tuple(r) for b in first for r in b} >= {tuple(r) for b in second for r in b}  # epoch 2: the same blocks
    assert second != first[: len(second)]  # in a new order
    train(make_cfg([*base, f"ckpt_path={tmp_path / 'whole' / 'mid.ckpt'}",
                    *_with_probe(tmp_path / "at_end", save_at=per_epoch + 1)], name="at_end"))
    assert _seen(tmp_path / "at_end") == whole[per_epoch:]
    train(make_cfg([*base, f"ckpt_path={tmp_path / 'at_end' / 'mid.ckpt'}", *_with_probe(tmp_path / "after")],
                   name="after"))
    assert _seen(tmp_path / "after") == whole[per_epoch + 1:]
