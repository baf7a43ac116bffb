"""The lead baseline of dialogue summarization: the first three turns of each dialogue as its summary, scored
with lmforge's ROUGE (rouge-score, stemming on, F-measures x100) on the same examples a recipe validates on.

    python benchmarks/seq2seq_lead_baseline.py                       # experiment=samsum's carved validation split
    python benchmarks/seq2seq_lead_baseline.py experiment=samsum data.split_seed=7

Any overrides are composed as train.py composes them; the split is the datamodule's own (same carving, same
rows), so the figure sits beside the recipe's val/rouge* as a like-for-like reference.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def lead(dialogue: str, turns: int = 3) -> str:
    lines = [ln.strip() for ln in dialogue.splitlines() if ln.strip()]
    return "\n".join(lines[:turns])


def main(argv: list[str]) -> dict:
    from lmforge.tasks.seq2seq.metrics import rouge
    from lmforge.train import build_datamodule
    from lmforge.utils.compose import compose_config, project_root

    overrides = argv or ["experiment=samsum"]
    with tempfile.TemporaryDirectory() as tmp:
        root = project_root()
        cfg = compose_config([*overrides, "extras.print_config=false"], Path(tmp) / "run", None,
                             root.parent / "shared" / "data")
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        ds = dm.datasets["validation"]
        docs = [ds.source(i) for i in range(len(ds))]
        refs = [ds.reference(i) for i in range(len(ds))]
    scores = {k: round(v, 2) for k, v in rouge([lead(d) for d in docs], refs).items()}
    out = {"examples": len(docs), "lead3": scores}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
