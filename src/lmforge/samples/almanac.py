"""Generator of lmforge's embedded question-answering sample: an almanac of imaginary places and people.

Everything is written by this module, not taken from any corpus: passages about invented towns,
people and ships are composed from hand-written phrase lists and names built from syllables (some
with accented letters, so that character offsets are exercised beyond ASCII), and each passage comes
with questions whose answers are spans of it. Passages hold several facts of the same kind (two
people, two years, two places), so a model must read the question to pick the right span; about one
passage in thirty gets a long history section, so the passage needs more than one 384-token window and
some answers lie in the later windows only.

The rows are flat, as the hub's ``squad`` dataset holds them (``id``, ``title``, ``context``,
``question``, ``answers: {"text": [...], "answer_start": [...]}``), one question a line; validation and
test passages are about places and people the training split never names. Regenerate with

    python -m lmforge.samples.almanac
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "almanac"
SPLITS = {"train": 160, "validation": 40, "test": 40}  # passages
SEED = 20261201
LONG_EVERY = 30  # every 30th passage (a town) gets a long history: more than one 384-token window

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v",
          "w", "z", "th", "sk", "j", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "é", "ö", "å", "ai", "ou", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "m", "th", "rn", "nd", "sk", "v", "ll", "ß"]
TOWN_ENDINGS = ["ford", "holm", "by", "stad", "mere", "wick", "dale", "port", "ville", "heim", "ton", "grad"]

REGION_KINDS = ["province", "county", "valley", "district", "canton", "highlands"]
PROFESSIONS = ["cartographer", "merchant", "physician", "shipwright", "astronomer", "weaver", "stonemason",
               "botanist", "engineer", "poet", "glassblower", "clockmaker", "surveyor", "brewer", "printer",
               "violin maker", "chemist", "architect", "sculptor", "miller"]
PRODUCTS = ["copper bells", "blue pottery", "woollen blankets", "salted herring", "rose honey", "paper lanterns",
            "walnut furniture", "silver buttons", "plum brandy", "linen sails", "glass beads", "leather boots",
            "mountain cheese", "river pearls", "brass telescopes", "cider vinegar", "painted tiles", "oak barrels"]
FESTIVALS = ["Lantern Fair", "Harvest Week", "Festival of Kites", "Night of Bells", "Midsummer Market",
             "River Regatta", "Feast of Bread", "Winter Parade", "Festival of Masks", "Apple Days"]
LANDMARK_KINDS = ["Tower", "Bridge", "Library", "Observatory", "Clock House", "Old Mill", "Cathedral", "Market Hall"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ACHIEVEMENTS = ["a map of the northern coast", "a cure for marsh fever", "the first steam loom in the region",
                "a catalogue of two thousand stars", "a method for casting large bells", "a dictionary of river names",
                "a pump that drained the lower fields", "a book of songs from the mountains",
                "a lens that could see the moons of the outer planets", "a bridge built without nails",
                "a printing press that used wooden type", "a calendar for the tides"]
PRIZES = ["Golden Compass", "Order of the Lamp", "Silver Quill", "Crown Medal", "Laurel of the Academy",
          "Star of Merit"]
SHIP_KINDS = ["schooner", "brigantine", "paddle steamer", "clipper", "whaler", "frigate"]
CARGOES = ["tea and spices", "timber", "wool", "coffee beans", "salt", "iron ore", "wine", "tobacco", "grain"]
EVENTS = [("a great fire", "destroyed"), ("a flood", "damaged"), ("a storm", "tore the roof from"),
          ("an earthquake", "shook"), ("a royal visit", "brought crowds to"), ("a new railway", "reached"),
          ("a plague", "emptied"), ("a fair", "filled")]
PLACES_IN_TOWN = ["the harbour", "the market square", "the old quarter", "the east gate", "the town hall",
                  "the cathedral close", "the mill district", "the river quays"]
FILLER = ["The streets of the old quarter are narrow and paved with grey cobbles.",
          "Many of the houses still have their original painted shutters.",
          "The local dialect has several words that are found nowhere else.",
          "Travellers in the last century described the town as quiet but prosperous.",
          "Its school is one of the oldest in the region and still teaches in the original building.",
          "The surrounding farmland is known for its orchards and its dark, heavy soil.",
          "A small museum near the station keeps maps, tools and letters from the town's early years.",
          "In winter the river sometimes freezes hard enough for people to walk across it.",
          "Local legend says that a bell lost in the river can still be heard on stormy nights.",
          "The town council meets once a month in a hall decorated with old trade banners.",
          "Fishing boats still leave the harbour before dawn, although there are fewer of them every year.",
          "A weekly market sells vegetables, cheese and cloth from the villages further up the valley.",
          "The old city wall was pulled down long ago, but a single gate still stands beside the main road.",
          "Several families have kept the same workshops on the main street for more than two hundred years.",
          "Visitors often climb the hill behind the town for the view over the river and the fields.",
          "The railway station was rebuilt in brick after the first wooden building burned down."]


class Passage:
    """A passage built sentence by sentence, remembering where each fact's text stands in it."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: dict[str, tuple[str, int]] = {}

    def add(self, *parts: str | tuple[str, str]) -> None:
        """A sentence from literal parts and ``(fact key, value)`` parts; a space separates sentences."""
        if self.text:
            self.text += " "
        for part in parts:
            if isinstance(part, tuple):
                key, value = part
                self.spans.setdefault(key, (value, len(self.text)))
                self.text += value
            else:
                self.text += part


class Names:
    """Syllable names, never the same twice (across all splits)."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def _word(self, syllables: int) -> str:
        r = self.rng
        return "".join(r.choice(ONSETS) + r.choice(VOWELS) + r.choice(CODAS) for _ in range(syllables)).capitalize()

    def fresh(self, make) -> str:
        while True:
            name = make()
            if name not in self.used and len(name) > 3:
                self.used.add(name)
                return name

    def person(self) -> str:
        return self.fresh(lambda: f"{self._word(self.rng.choice([1, 2]))} {self._word(2)}")

    def town(self) -> str:
        return self.fresh(lambda: self._word(self.rng.choice([1, 2])) + self.rng.choice(TOWN_ENDINGS))

    def place(self) -> str:
        return self.fresh(lambda: self._word(self.rng.choice([2, 3])))


def _q(rng: random.Random, templates: list[str], **kw: str) -> str:
    return rng.choice(templates).format(**kw)


def town_passage(rng: random.Random, names: Names, long: bool) -> tuple[str, Passage, list[tuple[str, str]]]:
    town, region, river = names.town(), names.place(), names.place()
    founder, architect = names.person(), names.person()
    kind = rng.choice(REGION_KINDS)
    profession, profession2 = rng.sample(PROFESSIONS, 2)
    founded = str(rng.randrange(1100, 1750))
    built = str(int(founded) + rng.randrange(40, 250))
    population = f"{rng.randrange(2, 300)},{rng.randrange(0, 1000):03d}"
    product = rng.choice(PRODUCTS)
    festival, month = rng.choice(FESTIVALS), rng.choice(MONTHS)
    landmark = f"{rng.choice(LANDMARK_KINDS)} of {names.place()}"
    p = Passage()
    p.add(("town", town), f" is a town in the {kind} of ", ("region", region), ", on the banks of the river ",
          ("river", river), ".")
    p.add("It was founded in ", ("founded", founded), f" by the {profession} ", ("founder", founder), ".")
    p.add("At the last census it had ", ("population", population), " inhabitants.")
    p.add("The town is best known for its ", ("product", product), ".")
    p.add(f"Every ", ("month", month), f", {town} holds the ", ("festival", festival),
          f", which draws visitors from across {region}.")
    p.add("Its most famous building, the ", ("landmark", landmark), f", was designed by the {profession2} ",
          ("architect", architect), " and completed in ", ("built", built), ".")
    qa = [
        (_q(rng, ["In which {kind} is {town}?", "Where is {town} located?", "{town} lies in which {kind}?"],
            kind=kind, town=town), "region"),
        (_q(rng, ["On which river does {town} lie?", "What river runs past {town}?"], town=town), "river"),
        (_q(rng, ["When was {town} founded?", "In what year was {town} founded?"], town=town), "founded"),
        (_q(rng, ["Who founded {town}?", "Which {profession} founded {town}?"], town=town, profession=profession),
         "founder"),
        (_q(rng, ["How many inhabitants did {town} have at the last census?", "What is the population of {town}?"],
            town=town), "population"),
        (_q(rng, ["What is {town} best known for?", "What is {town} famous for?"], town=town), "product"),
        (_q(rng, ["In which month is the {festival} held?", "When does {town} hold the {festival}?"],
            festival=festival, town=town), "month"),
        (_q(rng, ["Who designed the {landmark}?", "Which {profession} designed the {landmark}?"],
            landmark=landmark, profession=profession2), "architect"),
        (_q(rng, ["When was the {landmark} completed?", "In what year was the {landmark} finished?"],
            landmark=landmark), "built"),
        (_q(rng, ["What is the most famous building in {town}?", "Which building of {town} is the most famous?"],
            town=town), "landmark"),
    ]
    if long:  # a history long enough to need a second window; some answers lie only in it
        fillers = FILLER[:]
        rng.shuffle(fillers)
        years = sorted(rng.sample(range(int(built) + 1, 1990), 8))
        p.add("History.")
        for i, year in enumerate(years):
            event, verb = rng.choice(EVENTS)
            p.add(f"In {year}, {event} {verb} {rng.choice(PLACES_IN_TOWN)}.")
            p.add(fillers[(2 * i) % len(fillers)])
            p.add(fillers[(2 * i + 1) % len(fillers)])
        mayor = names.person()
        twin = names.town()
        p.add("The present mayor, ", ("mayor", mayor), ", was elected in ", ("elected", str(rng.randrange(1995, 2025))),
              ".")
        p.add(f"Since {rng.randrange(1950, 1990)}, {town} has been twinned with ", ("twin", twin), ".")
        qa += [(_q(rng, ["Who is the mayor of {town}?", "Who is the present mayor of {town}?"], town=town), "mayor"),
               (_q(rng, ["When was the present mayor of {town} elected?"], town=town), "elected"),
               (_q(rng, ["Which town is {town} twinned with?", "What is the twin town of {town}?"], town=town),
                "twin")]
    return town, p, qa


def person_passage(rng: random.Random, names: Names) -> tuple[str, Passage, list[tuple[str, str]]]:
    person, colleague = names.person(), names.person()
    birthplace, city = names.town(), names.town()
    profession = rng.choice(PROFESSIONS)
    born = rng.randrange(1500, 1900)
    died = born + rng.randrange(35, 90)
    moved = born + rng.randrange(18, 30)
    awarded = moved + rng.randrange(3, 20)
    achievement, prize = rng.choice(ACHIEVEMENTS), rng.choice(PRIZES)
    pro = rng.choice(["he", "she"])
    p = Passage()
    p.add(("person", person), " (", ("born", str(born)), "–", ("died", str(died)), ") was a ", ("profession", profession),
          " born in ", ("birthplace", birthplace), ".")
    p.add(f"{pro.capitalize()} is remembered above all for ", ("achievement", achievement), ".")
    p.add("In ", ("moved", str(moved)), f", {person.split()[-1]} moved to ", ("city", city), f", where {pro} worked with ",
          ("colleague", colleague), " for many years.")
    p.add(f"{pro.capitalize()} received the ", ("prize", prize), " in ", ("awarded", str(awarded)), ".")
    qa = [
        (_q(rng, ["When was {person} born?", "In what year was {person} born?"], person=person), "born"),
        (_q(rng, ["When did {person} die?", "In which year did {person} die?"], person=person), "died"),
        (_q(rng, ["Where was {person} born?", "In which town was {person} born?"], person=person), "birthplace"),
        (_q(rng, ["What was the profession of {person}?", "What did {person} work as?"], person=person),
         "profession"),
        (_q(rng, ["What is {person} remembered for?", "For what is {person} best remembered?"], person=person),
         "achievement"),
        (_q(rng, ["Where did {person} move in {year}?", "To which city did {person} move?"], person=person,
            year=str(moved)), "city"),
        (_q(rng, ["Who did {person} work with in {city}?", "With whom did {person} work for many years?"],
            person=person, city=city), "colleague"),
        (_q(rng, ["Which prize did {person} receive?", "What award was given to {person}?"], person=person), "prize"),
        (_q(rng, ["When did {person} receive the {prize}?"], person=person, prize=prize), "awarded"),
    ]
    return person, p, qa


def ship_passage(rng: random.Random, names: Names) -> tuple[str, Passage, list[tuple[str, str]]]:
    ship, captain, owner = names.place(), names.person(), names.person()
    port, destination = names.town(), names.town()
    kind, cargo = rng.choice(SHIP_KINDS), rng.choice(CARGOES)
    launched = rng.randrange(1650, 1900)
    wrecked = launched + rng.randrange(5, 60)
    voyages = str(rng.randrange(3, 90))
    title = f"The {ship}"
    p = Passage()
    p.add("The ", ("ship", ship), " was a ", ("kind", kind), " launched at ", ("port", port), " in ",
          ("launched", str(launched)), " for the merchant ", ("owner", owner), ".")
    p.add("Under captain ", ("captain", captain), ", she sailed regularly to ", ("destination", destination),
          ", carrying ", ("cargo", cargo), ".")
    p.add("She completed ", ("voyages", voyages), " voyages before she was lost in a storm in ",
          ("wrecked", str(wrecked)), ".")
    qa = [
        (_q(rng, ["What kind of ship was the {ship}?", "What type of vessel was the {ship}?"], ship=ship), "kind"),
        (_q(rng, ["Where was the {ship} launched?", "At which port was the {ship} launched?"], ship=ship), "port"),
        (_q(rng, ["When was the {ship} launched?", "In what year was the {ship} launched?"], ship=ship), "launched"),
        (_q(rng, ["Who owned the {ship}?", "For which merchant was the {ship} built?"], ship=ship), "owner"),
        (_q(rng, ["Who was the captain of the {ship}?", "Who commanded the {ship}?"], ship=ship), "captain"),
        (_q(rng, ["Where did the {ship} sail to?", "What was the destination of the {ship}?"], ship=ship),
         "destination"),
        (_q(rng, ["What did the {ship} carry?", "What cargo did the {ship} carry?"], ship=ship), "cargo"),
        (_q(rng, ["How many voyages did the {ship} complete?"], ship=ship), "voyages"),
        (_q(rng, ["When was the {ship} lost?", "In which year was the {ship} wrecked?"], ship=ship), "wrecked"),
    ]
    return title, p, qa


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """Every split's rows; the same seed gives the same rows."""
    rng = random.Random(seed)
    names = Names(rng)
    out: dict[str, list[dict]] = {}
    for split, n_passages in SPLITS.items():
        rows = []
        for n in range(n_passages):
            kind = n % 3
            if kind == 0:
                title, passage, qa = town_passage(rng, names, long=n % LONG_EVERY == 0)
            elif kind == 1:
                title, passage, qa = person_passage(rng, names)
            else:
                title, passage, qa = ship_passage(rng, names)
            if n % LONG_EVERY == 0:  # a long passage: its last facts (in its second window) and one more
                asked = [rng.choice(qa[:-3]), *qa[-3:]]
            else:
                asked = rng.sample(qa, min(len(qa), rng.randrange(4, 7)))
            for k, (question, key) in enumerate(asked):
                text, start = passage.spans[key]
                assert passage.text[start: start + len(text)] == text
                rows.append({"id": f"{split}-{n:04d}-{k}", "title": title, "context": passage.text,
                             "question": question, "answers": {"text": [text], "answer_start": [start]}})
        out[split] = rows
    return out


def as_squad_json(rows: list[dict], version: str = "1.1") -> dict:
    """Flat rows in the official SQuAD layout: articles (by title) -> paragraphs (by passage) -> qas."""
    articles: dict[str, dict[str, list]] = {}
    for row in rows:
        paragraphs = articles.setdefault(row["title"], {})
        paragraphs.setdefault(row["context"], []).append(
            {"id": row["id"], "question": row["question"],
             "answers": [{"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"],
                                                                         row["answers"]["answer_start"])]})
    return {"version": version, "data": [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
        for title, paragraphs in articles.items()]}


def write(folder: Path = HERE, seed: int = SEED) -> dict[str, int]:
    """``<split>.jsonl`` (flat rows) for every split, and the validation split once more as SQuAD v1.1 JSON
    (``validation-v1.1.json``, the layout of the official ``dev-v1.1.json``), for ``eval.py file=...``."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in generate(seed).items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if split == "validation":
            (folder / "validation-v1.1.json").write_text(json.dumps(as_squad_json(rows), ensure_ascii=False) + "\n",
                                                          encoding="utf-8")
        counts[split] = len(rows)
    return counts


if __name__ == "__main__":
    counts = write()
    print(f"wrote {', '.join(f'{k}={v}' for k, v in counts.items())} questions to {HERE}")
