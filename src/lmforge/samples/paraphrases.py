"""Generator of lmforge's embedded paraphrase sample (sentence pairs with 0-5 similarity scores).

The sample is written by this module, not taken from any corpus: each pair starts from one small
scene (someone does something to something somewhere) composed from hand-written word lists, and
its second sentence is that scene said again, or changed, with a score for how much was kept, in
the spirit of STS-B's 0-5 scale:

* 5: the same scene in other words (synonyms, active/passive, place moved to the front);
* 4: the same scene without its place;
* 3: the same actor and action on another object;
* 2: another actor doing the same action to the same object;
* 1: the same place, everything else different;
* 0: an unrelated scene.

The files under ``samples/paraphrases/`` are its output (``sentence1``, ``sentence2``, ``score``);
regenerate them with

    python -m lmforge.samples.paraphrases

Splits are drawn from disjoint actor pools, so validation and test pairs talk about people the
training split never names.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "paraphrases"
SPLITS = {"train": 900, "validation": 200, "test": 200}
SEED = 20261201

# each actor with a paraphrase of it
ACTORS = [
    ("the young chef", "the junior cook"), ("my neighbour", "the man next door"),
    ("the old farmer", "the elderly grower"), ("a tired nurse", "an exhausted nurse"),
    ("the schoolteacher", "the teacher"), ("our landlord", "the owner of our flat"),
    ("the little girl", "the small child"), ("a police officer", "a policeman"),
    ("the bus driver", "the driver of the bus"), ("my grandmother", "my gran"),
    ("the new student", "the freshman"), ("a street musician", "a busker"),
    ("the mechanic", "the car repairman"), ("two boys", "a pair of boys"),
    ("the fisherman", "the angler"), ("a famous actor", "a well-known actor"),
    ("the shop owner", "the shopkeeper"), ("my sister", "my sibling"),
    ("the pilot", "the aviator"), ("a group of tourists", "some tourists"),
    ("the librarian", "the library clerk"), ("the postman", "the mail carrier"),
    ("a young woman", "a girl in her twenties"), ("the gardener", "the groundskeeper"),
    ("the doctor", "the physician"), ("an old man", "an elderly gentleman"),
    ("the baker", "the bread maker"), ("my cousin", "a cousin of mine"),
    ("the soldier", "the serviceman"), ("a tall man", "a man of great height"),
]

# (present verb, past verb, synonym past verb, passive participle of the synonym)
ACTIONS = [
    ("fix", "fixed", "repaired", "repaired"), ("paint", "painted", "coloured", "coloured"),
    ("clean", "cleaned", "scrubbed", "scrubbed"), ("sell", "sold", "traded away", "traded away"),
    ("buy", "bought", "purchased", "purchased"), ("carry", "carried", "hauled", "hauled"),
    ("open", "opened", "unlocked", "unlocked"), ("wash", "washed", "rinsed", "rinsed"),
    ("find", "found", "discovered", "discovered"), ("drop", "dropped", "let fall", "let fall"),
    ("cook", "cooked", "prepared", "prepared"), ("build", "built", "constructed", "constructed"),
    ("read", "read", "studied", "studied"), ("lose", "lost", "misplaced", "misplaced"),
]

OBJECTS = [
    ("an old bicycle", "a worn bike"), ("the kitchen table", "the table in the kitchen"),
    ("a red umbrella", "a scarlet umbrella"), ("the front door", "the main door"),
    ("a large box", "a big carton"), ("the broken chair", "the damaged chair"),
    ("a wooden boat", "a timber boat"), ("the family car", "the household car"),
    ("a small radio", "a tiny radio"), ("the garden fence", "the fence around the garden"),
    ("a heavy suitcase", "a weighty suitcase"), ("the letter", "the note"),
    ("a loaf of bread", "some bread"), ("the map", "the chart"),
    ("a silver key", "a key made of silver"), ("the blue jacket", "the navy coat"),
    ("a stack of books", "a pile of books"), ("the window", "the pane"),
]

PLACES = [
    ("in the morning", "early in the day"), ("at the market", "in the marketplace"),
    ("near the river", "by the river"), ("in the garage", "inside the garage"),
    ("after lunch", "once lunch was over"), ("at the station", "at the train station"),
    ("on Sunday", "on the Sunday"), ("in the rain", "while it rained"),
    ("behind the house", "at the back of the house"), ("before dinner", "ahead of dinner"),
    ("in the village", "in the small town"), ("late at night", "in the late evening"),
]


def _scene(rng: random.Random, actors: list) -> dict:
    return {"actor": rng.choice(actors), "action": rng.choice(ACTIONS), "object": rng.choice(OBJECTS),
            "place": rng.choice(PLACES)}


def _say(s: dict) -> str:
    return f"{s['actor'][0].capitalize()} {s['action'][1]} {s['object'][0]} {s['place'][0]}."


def _paraphrase(rng: random.Random, s: dict, with_place: bool = True) -> str:
    actor, obj, place = s["actor"][1], s["object"][1], s["place"][1]
    form = rng.randrange(3)
    if form == 0:
        text = f"{actor} {s['action'][2]} {obj}" + (f" {place}" if with_place else "")
    elif form == 1:
        text = f"{obj} was {s['action'][3]} by {actor}" + (f" {place}" if with_place else "")
    else:
        text = (f"{place}, {actor} {s['action'][2]} {obj}" if with_place else f"{actor} {s['action'][2]} {obj}")
    return text[0].upper() + text[1:] + "."


def _pair(rng: random.Random, actors: list) -> dict:
    s = _scene(rng, actors)
    level = rng.choice([5, 5, 4, 3, 2, 1, 0])
    if level == 5:
        other = _paraphrase(rng, s)
    elif level == 4:
        other = _paraphrase(rng, s, with_place=False)
    elif level == 3:
        other = _say({**s, "object": rng.choice([o for o in OBJECTS if o != s["object"]])})
    elif level == 2:
        other = _say({**s, "actor": rng.choice([a for a in actors if a != s["actor"]])})
    elif level == 1:
        other = _say({**_scene(rng, actors), "place": s["place"]})
    else:
        t = _scene(rng, actors)
        while t["action"] == s["action"] or t["object"] == s["object"] or t["place"] == s["place"]:
            t = _scene(rng, actors)
        other = _say(t)
    # a little noise around the level, as annotators' averages have (0.2 steps, kept within 0-5)
    score = min(5.0, max(0.0, level + rng.choice([-0.4, -0.2, 0.0, 0.0, 0.2, 0.4])))
    first, second = _say(s), other
    if rng.random() < 0.5:
        first, second = second, first
    return {"sentence1": first, "sentence2": second, "score": round(score, 1)}


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    actors = ACTORS[:]
    rng.shuffle(actors)
    pools = {"train": actors[:20], "validation": actors[20:25], "test": actors[25:]}
    return {split: [_pair(rng, pools[split]) for _ in range(n)] for split, n in SPLITS.items()}


def write(folder: Path = HERE, seed: int = SEED) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in generate(seed).items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    write()
