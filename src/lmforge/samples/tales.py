"""Generator of lmforge's embedded pretraining sample: short fables, one per paragraph.

The stories are written by this module, not taken from any corpus: each is composed from
hand-written phrase lists (characters, places, objects, wishes, troubles, helpers, endings) with a
simple plot: someone wants something, meets a trouble, is helped or learns a lesson. Names and
objects recur inside a story, so a language model can learn both the phrasing and to copy what the
story has introduced. The files under ``samples/tales/`` are its output (documents separated by a
blank line); regenerate them with

    python -m lmforge.samples.tales
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "tales"
SPLITS = {"train": 1200, "validation": 120}
SEED = 20261201

ANIMALS = ["fox", "rabbit", "owl", "bear", "mouse", "crow", "wolf", "badger", "heron", "goat", "turtle", "cat",
           "hedgehog", "deer", "frog", "squirrel", "duck", "otter", "lamb", "sparrow"]
NAMES = ["Ada", "Milo", "Tess", "Bram", "Nell", "Otto", "Ivy", "Finn", "Rosa", "Hugo", "Lena", "Pip", "Wren", "Juno",
         "Cole", "Mira", "Theo", "Dora", "Sami", "Basil"]
ADJECTIVES = ["old", "little", "clever", "shy", "brave", "hungry", "proud", "kind", "sleepy", "curious", "grumpy",
              "young", "quiet", "restless"]
PLACES = ["in a deep forest", "by a cold river", "on a windy hill", "near a quiet village", "under an old bridge",
          "at the edge of a marsh", "in a sunny meadow", "beside a tall mill", "in a hollow tree", "on a rocky shore"]
OBJECTS = ["a silver key", "a red apple", "a warm coat", "a golden feather", "a jar of honey", "a wooden flute",
           "a bright lantern", "a basket of berries", "a smooth stone", "a blue ribbon", "a map of the stars",
           "a loaf of bread"]
TROUBLES = ["a storm broke over the hills", "the river rose and covered the path", "a thick fog came down",
            "the night grew dark and cold", "a wide crack opened in the ground", "the bridge had fallen",
            "a hungry wolf blocked the way", "the snow began to fall"]
HELPERS = ["a wise owl", "an old tortoise", "a friendly miller", "a group of ants", "a patient heron",
           "a laughing otter", "a gentle bear", "a little girl"]
HELP = ["showed {pro} a hidden path", "shared a fire and a warm meal", "carried {pro} across the water",
        "told {pro} to wait for the morning", "gave {pro} a rope to climb", "sang until the fear went away"]
LESSONS = ["Patience is worth more than speed.", "A friend in need is a friend indeed.",
           "Small steps still climb a hill.", "Kindness is never wasted.", "Pride goes before a fall.",
           "Share what you have, and you will have enough.", "Listen before you leap."]
ENDINGS = ["From that day on, {name} never forgot the lesson.", "And {name} slept well that night.",
           "{Name} went home happy, with {obj} safe at last.", "The animals {place} still tell this story."]


def _story(rng: random.Random) -> str:
    animal, adjective, name = rng.choice(ANIMALS), rng.choice(ADJECTIVES), rng.choice(NAMES)
    pro = rng.choice(["him", "her"])
    sub = "he" if pro == "him" else "she"
    place = rng.choice(PLACES)
    obj = rng.choice(OBJECTS)
    who = f"the {adjective} {animal}"
    opening = rng.choice([
        f"Once upon a time, {place}, there lived a {adjective} {animal} named {name}.",
        f"Long ago, {place}, lived {name}, a {adjective} {animal}.",
        f"There was once a {adjective} {animal} called {name}, who lived {place}.",
    ])
    want = rng.choice([
        f"{name} wanted {obj} more than anything.",
        f"One morning {name} heard about {obj} on the far side of the hills.",
        f"Every day {name} dreamed of finding {obj}.",
    ])
    journey = rng.choice([
        f"So {sub} packed a small bag and set off at dawn.",
        f"{sub.capitalize()} said goodbye to {pro == 'him' and 'his' or 'her'} friends and started walking.",
        f"Without a word to anyone, {who} left home.",
    ])
    trouble = f"But on the way, {rng.choice(TROUBLES)}."
    if rng.random() < 0.7:
        helper = rng.choice(HELPERS)
        turn = (f"{name} was afraid, until {helper} came by and {rng.choice(HELP).format(pro=pro)}. "
                f"At last {sub} found {obj}.")
    else:
        turn = (f"{name} tried to hurry and fell, and {obj} was lost. "
                f"{sub.capitalize()} walked home slowly, thinking.")
    lesson = rng.choice(LESSONS)
    ending = rng.choice(ENDINGS).format(name=name, Name=name, obj=obj, place=place)
    sentences = [opening, want, journey, trouble, turn]
    if rng.random() < 0.5:
        sentences.append(f"\"{lesson}\" said {name}.")
    sentences.append(ending)
    # wrap the paragraph at about 80 characters, like a plain text file
    lines, line = [], ""
    for word in " ".join(sentences).split(" "):
        if line and len(line) + 1 + len(word) > 80:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


def generate(seed: int = SEED) -> dict[str, list[str]]:
    """Every split's stories; the same seed gives the same text, and no story appears twice."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for split, size in SPLITS.items():
        docs: list[str] = []
        while len(docs) < size:
            story = _story(rng)
            if story not in seen:
                seen.add(story)
                docs.append(story)
        out[split] = docs
    return out


def write(folder: Path = HERE, seed: int = SEED) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, docs in generate(seed).items():
        (folder / f"{split}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
    print(f"wrote {', '.join(f'{k}={v}' for k, v in SPLITS.items())} stories to {HERE}")
