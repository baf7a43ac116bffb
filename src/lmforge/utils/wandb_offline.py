"""Read an offline W&B run back (``WANDB_MODE=offline``) with wandb's own protobuf classes.

wandb 0.31 writes one binary ``run-<id>.wandb`` per run: a 7-byte header (``:W&B``, magic, version)
followed by LevelDB-log framed records (32 KiB blocks; each chunk has a 7-byte header of
checksum, length and type FULL/FIRST/MIDDLE/LAST), each a serialized ``wandb_internal_pb2.Record``.
The Python reader that older releases shipped is gone; this is a small one, for tests and for
checking what a sweep logged before syncing it.

    from lmforge.utils.wandb_offline import read_run
    run = read_run("logs/.../wandb/offline-run-*/run-*.wandb")
    run["group"], run["name"], run["config"]["optimizer"], run["history"][-1]["train/loss"], run["summary"]
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32768
HEADER = 7


def iter_records(path: str | Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (header {data[:4]!r}, expected b':W&B')")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += room
            continue
        chunk = data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield pb.Record.FromString(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pb.Record.FromString(pending + chunk)
            pending = b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")


def _items(items) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        key = "/".join(it.nested_key) if it.nested_key else it.key
        out[key] = json.loads(it.value_json)
    return out


def read_run(path: str | Path) -> dict[str, Any]:
    """id, name, group, tags, project, config, history (list of dicts), summary of one offline run file."""
    # wandb names the file after the run id (run-<id>.wandb); a run record, when present, says it again
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "tags": [],
                           "id": Path(path).stem.removeprefix("run-")}
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.update(id=r.run_id or run["id"], name=r.display_name, group=r.run_group, project=r.project,
                       job_type=r.job_type, tags=list(r.tags))
            run["config"].update({k: v.get("value", v) if isinstance(v, dict) else v
                                  for k, v in _items(r.config.update).items()})
        elif kind == "config":
            run["config"].update({k: v.get("value", v) if isinstance(v, dict) else v
                                  for k, v in _items(rec.config.update).items()})
        elif kind == "history":
            run["history"].append(_items(rec.history.item))
        elif kind == "summary":
            run["summary"].update(_items(rec.summary.update))
            for it in rec.summary.remove:
                run["summary"].pop(it.key, None)
        elif kind == "exit":
            run["exit_code"] = rec.exit.exit_code
    return run


def find_runs(folder: str | Path) -> list[Path]:
    """Every ``run-*.wandb`` file under ``folder``."""
    return sorted(Path(folder).rglob("run-*.wandb"))
