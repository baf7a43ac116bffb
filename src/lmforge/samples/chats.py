"""Generator of lmforge's embedded summarization sample: short chat dialogues between two friends who
make plans, each with a one- or two-sentence summary, in the style of messenger-dialogue corpora.

The dialogues are made by this module, not taken from any corpus: turns are composed from phrase lists
written for lmforge. What the summary says (who, what, which day, when, where, and whether the plan
holds, moves to another day or falls through, and why) is spread over several turns, with small talk
between them, so a model has to read the whole dialogue and copy names and details. Turns are separated
by newlines, as in SAMSum. The files under ``samples/chats/`` are its output (JSON lines with
``dialogue`` and ``summary``); regenerate them with

    python -m lmforge.samples.chats
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "chats"
SPLITS = {"train": 2000, "validation": 200, "test": 200}
SEED = 20261201

NAMES = """Anna Ben Carla David Emma Felix Greta Hugo Ines Jonas Kira Liam Mira Noah Olga Paul Rosa Sam Tara Victor
Wanda Yusuf Zoe Aaron Bella Chris Dana Elias Fiona Gabe Hanna Ivan Julia Karl Lena Marek Nina Oscar Petra Rafael""".split()
# (invitation phrase, summary phrase)
ACTIVITIES = [("go to the cinema", "go to the cinema"), ("have dinner at the new Thai place", "have dinner at the new Thai place"),
              ("play tennis", "play tennis"), ("go for a run", "go for a run"), ("visit the museum", "visit the museum"),
              ("study for the exam", "study for the exam"), ("go shopping", "go shopping"),
              ("watch the football match", "watch the football match"), ("go hiking", "go hiking"),
              ("grab a coffee", "have coffee"), ("see the concert", "see the concert"), ("bake a cake", "bake a cake")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["9 am", "10 am", "11 am", "noon", "2 pm", "4 pm", "5 pm", "6 pm", "7 pm", "8 pm"]
PLACES = ["the station", "the main square", "my place", "your place", "the park entrance", "the library",
          "the bus stop", "the cafe on the corner"]
REASONS = [("I have to work late", "{n} has to work late"), ("my mum is visiting", "{n}'s mum is visiting"),
           ("I'm sick", "{n} is sick"), ("I have a dentist appointment", "{n} has a dentist appointment"),
           ("I promised to help my brother move", "{n} promised to help {n}'s brother move")]
SMALL_TALK = [("How are you?", "Good, thanks! Busy week."), ("Did you see the rain this morning?", "Yes, I got soaked."),
              ("How was your weekend?", "Quiet, I mostly slept."), ("Is your new job going well?", "Yes, the team is nice."),
              ("Did you finish the book?", "Almost, two chapters left.")]


def dialogue(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    act, act_sum = rng.choice(ACTIVITIES)
    day, time, place = rng.choice(DAYS), rng.choice(TIMES), rng.choice(PLACES)
    turns = [(a, rng.choice([f"Hi {b}!", f"Hey {b}", f"Hello {b} :)"]))]
    if rng.random() < 0.6:
        q, r = rng.choice(SMALL_TALK)
        turns += [(b, f"Hi {a}!"), (a, q), (b, r)]
    turns.append((a, rng.choice([f"Do you want to {act} on {day}?", f"Would you like to {act} on {day}?",
                                 f"Are you free on {day}? We could {act}."])))
    outcome = rng.choices(["yes", "no", "move"], weights=[5, 2, 2])[0]
    if outcome == "no":
        reason, reason_sum = rng.choice(REASONS)
        turns += [(b, rng.choice([f"Sorry, I can't, {reason}.", f"I'd love to, but {reason}."])),
                  (a, rng.choice(["No problem, another time!", "Too bad. Maybe next week?", "Ok, get some rest then."]))]
        summary = f"{b} can't {act_sum} with {a} on {day}, because {reason_sum.format(n=b)}."
        return "\n".join(f"{n}: {t}" for n, t in turns), summary
    if outcome == "move":
        new_day = rng.choice([d for d in DAYS if d != day])
        turns += [(b, f"{day} is bad for me. What about {new_day}?"), (a, f"{new_day} works too.")]
        day = new_day
    else:
        turns.append((b, rng.choice(["Sure! What time?", "Sounds great. When?", "Yes, good idea! What time?"])))
    turns += [(a, rng.choice([f"Let's meet at {time} at {place}.", f"How about {time} at {place}?"])),
              (b, rng.choice(["Perfect, see you then!", "Great, see you!", "Ok :)"]))]
    where = place.replace("my place", f"{a}'s place").replace("your place", f"{b}'s place")
    summary = (f"{a} and {b} will {act_sum} on {day}" + (", not on the day first proposed" if outcome == "move" else "")
               + f". They will meet at {time} at {where}.")
    return "\n".join(f"{n}: {t}" for n, t in turns), summary


def generate(seed: int = SEED) -> dict[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[tuple[str, str]]] = {}
    for split, n in SPLITS.items():
        rows = []
        while len(rows) < n:
            d, s = dialogue(rng)
            if d not in seen:
                seen.add(d)
                rows.append((d, s))
        out[split] = rows
    return out


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for split, rows in generate().items():
        with open(HERE / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for d, s in rows:
                f.write(json.dumps({"dialogue": d, "summary": s}, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} dialogues -> {HERE / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
