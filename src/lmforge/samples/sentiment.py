"""Generator of lmforge's embedded sentiment sample (short English reviews, positive/negative).

The sample is written by this module, not taken from any corpus: reviews are composed from
hand-written phrase lists (subjects, opinions, intensifiers, reasons, negations, contrasts), so
that a model must read the opinion words, negation and "but" clauses to get the label right.
The files under ``samples/sentiment/`` are its output; regenerate them with

    python -m lmforge.samples.sentiment

Splits are drawn from disjoint subject pools so validation and test reviews talk about things
that the training split never mentions by name.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "sentiment"
SPLITS = {"train": 2000, "validation": 400, "test": 400}
SEED = 20261201

SUBJECTS = [
    "film", "movie", "book", "novel", "album", "song", "restaurant", "cafe", "hotel", "show",
    "series", "episode", "game", "play", "concert", "phone", "laptop", "camera", "headset",
    "blender", "sofa", "jacket", "pair of boots", "backpack", "tour", "museum", "course",
    "lecture", "app", "podcast", "documentary", "comedy", "thriller", "musical", "pizza",
    "burger", "soup", "bakery", "gym", "spa", "flight", "train ride", "bike", "tent",
    "keyboard", "monitor", "printer", "car", "apartment", "beach resort", "cookbook", "poem",
]

POSITIVE = [
    "wonderful", "excellent", "delightful", "brilliant", "superb", "charming", "fantastic",
    "great", "lovely", "impressive", "moving", "enjoyable", "fun", "gorgeous", "clever",
    "satisfying", "beautiful", "outstanding", "warm", "refreshing", "reliable", "solid",
]
NEGATIVE = [
    "terrible", "awful", "boring", "dull", "disappointing", "dreadful", "mediocre", "poor",
    "tedious", "bland", "clumsy", "annoying", "painful", "forgettable", "messy", "broken",
    "overpriced", "lifeless", "sloppy", "frustrating", "weak", "miserable",
]
INTENSIFIERS = ["", "", "", "really ", "truly ", "very ", "quite ", "absolutely ", "so ", "incredibly "]

POS_VERBS = ["loved", "enjoyed", "adored", "liked", "appreciated", "was thrilled by"]
NEG_VERBS = ["hated", "disliked", "regretted", "could not stand", "was bored by", "gave up on"]

POS_REASONS = [
    "the details were handled with care", "it kept me smiling the whole time",
    "everything worked exactly as promised", "the staff could not have been kinder",
    "the ending was perfect", "it was worth every penny", "I would happily go back",
    "the pacing never dragged", "it exceeded my expectations", "my friends loved it too",
    "the quality is obvious", "it made my week",
]
NEG_REASONS = [
    "nothing about it worked", "it fell apart after a day", "I wanted my money back",
    "the staff ignored us", "the ending made no sense", "it was a waste of money",
    "I will never go back", "the pacing dragged terribly", "it fell far short of the hype",
    "I nearly walked out", "the quality is shocking", "it ruined my evening",
]

POS_CLOSERS = ["Highly recommended.", "Five stars.", "Go for it.", "A real gem.", "I want more.", ""]
NEG_CLOSERS = ["Avoid it.", "One star.", "Skip this one.", "Not worth it.", "Never again.", ""]


def _opinion(rng: random.Random, positive: bool) -> str:
    return rng.choice(INTENSIFIERS) + rng.choice(POSITIVE if positive else NEGATIVE)


def _a(phrase: str) -> str:
    """The indefinite article that fits ``phrase``."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _review(rng: random.Random, subject: str, positive: bool) -> str:
    """One review whose overall sentiment is ``positive``; the template picks the phrasing."""
    pos, neg = positive, not positive
    kind = rng.randrange(9)
    if kind == 0:
        text = f"The {subject} was {_opinion(rng, pos)}."
    elif kind == 1:
        verb = rng.choice(POS_VERBS if pos else NEG_VERBS)
        text = f"I {verb} this {subject}."
    elif kind == 2:  # negated opposite opinion: "not boring" reads positive
        text = f"This {subject} was not {rng.choice(NEGATIVE if pos else POSITIVE)} at all."
    elif kind == 3:  # contrast: the clause after "but" decides
        text = (f"The {subject} started out {rng.choice(NEGATIVE if pos else POSITIVE)}, "
                f"but it turned out {_opinion(rng, pos)}.")
    elif kind == 4:
        reason = rng.choice(POS_REASONS if pos else NEG_REASONS)
        text = f"{_a(_opinion(rng, pos)).capitalize()} {subject}; {reason}."
    elif kind == 5:
        text = (f"What {_a(rng.choice(POSITIVE if pos else NEGATIVE))} {subject}! "
                f"{rng.choice(POS_REASONS if pos else NEG_REASONS).capitalize()}.")
    elif kind == 6:
        text = (f"I expected {_a(rng.choice(NEGATIVE if pos else POSITIVE))} {subject}, "
                f"yet it was {_opinion(rng, pos)}.")
    elif kind == 7:
        text = (f"Honestly, the {subject} is {_opinion(rng, pos)} and "
                f"{rng.choice(POSITIVE if pos else NEGATIVE)}.")
    else:
        verb = rng.choice(POS_VERBS if pos else NEG_VERBS)
        text = f"We {verb} the {subject} because {rng.choice(POS_REASONS if pos else NEG_REASONS)}."
    closer = rng.choice(POS_CLOSERS if pos else NEG_CLOSERS)
    return f"{text} {closer}".strip()


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """Build every split; the same seed gives the same rows."""
    rng = random.Random(seed)
    subjects = SUBJECTS[:]
    rng.shuffle(subjects)
    n = len(subjects)
    pools = {"train": subjects[: n * 3 // 5], "validation": subjects[n * 3 // 5: n * 4 // 5],
             "test": subjects[n * 4 // 5:]}
    out: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for split, size in SPLITS.items():
        rows: list[dict] = []
        while len(rows) < size:
            positive = len(rows) % 2 == 0
            text = _review(rng, rng.choice(pools[split]), positive)
            if text in seen:
                continue
            seen.add(text)
            rows.append({"text": text, "label": "positive" if positive else "negative"})
        rng.shuffle(rows)
        out[split] = rows
    return out


def write(folder: Path = HERE, seed: int = SEED) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in generate(seed).items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    write()
    print(f"wrote {', '.join(f'{k}={v}' for k, v in SPLITS.items())} rows to {HERE}")
