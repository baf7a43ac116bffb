"""Generator of lmforge's embedded NER sample: short newswire-style sentences with persons (PER),
organisations (ORG), locations (LOC) and miscellaneous names (MISC: nationalities, events), tagged IOB2.

The sample is written by this module, not taken from any corpus: sentences are composed from
sentence patterns and name lists written for lmforge. The files under ``samples/newswire/`` are its
output, CoNLL column files (``token tag`` per line, a blank line between sentences, ``-DOCSTART-``
between documents of 20 sentences); regenerate them with

    python -m lmforge.samples.newswire

Names are split into pools: most names in the validation and test sentences never occur in the
training split, so a model has to learn from context (``, the chief executive of ...``) and from the
shape of names, not by heart. Some patterns hold names of one type inside another's place (a club
named after its city, a stock exchange named after its city) and some sentences hold no entity.
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "newswire"
SPLITS = {"train": 2000, "validation": 400, "test": 400}
SEED = 20261201
DOC_SENTENCES = 20

FIRST = """Maren Tobias Ines Kwame Aiko Rafael Selin Omar Lucia Henrik Priya Dmitri Amara Mateo Yusuf Freya Jonas
Leila Kenji Sofia Tomasz Nadia Emeka Clara Arjun Ingrid Pablo Hana Viktor Zainab Marco Elif Samuel Noor Felix Rosa
Anders Mei Gabriel Ayesha Lukas Chiara Kofi Greta Hugo Yara Stefan Lina Idris Paula Bruno Asha Teodor Malik Vera
Oskar Daria Ruben Esme Nikolai""".split()
LAST = """Holt Kerr Vardy Mensah Tanaka Oliveira Demir Haddad Moreno Lindqvist Raman Volkov Okafor Ruiz Celik
Brandt Strand Karimi Sato Costa Nowak Bakri Eze Fischer Iyer Dahl Navarro Kimura Petrov Bello Ricci Aydin Adeyemi
Weber Qureshi Soto Berg Chen Laurent Malik Hoffmann Bianchi Asante Nilsen Duarte Farouk Schmidt Varga Lopes
Achebe Rossi Jansen Ortiz Yilmaz Horvat Silva Novak Park Ibrahim Keller""".split()
ORG_ROOTS = """Northwind Brightwater Calder Halvorsen Meridian Kestrel Ashford Greyhaven Solano Tidewater Ironbridge
Bluefield Corvane Westmark Silverline Oakridge Stellar Harbourview Redstone Fairhaven Lumen Castellan Everpeak
Marlow Quayside Aldergate Novacor Pinecrest Sundial Thornbury Vantage Wexford Zephyr Brookline Cobalt
Drummond""".split()
ORG_SUFFIXES = """Energy Bank Motors Airlines Group Holdings Pharmaceuticals Telecom Foods Insurance Capital Systems
Shipping Steel Media Mining Logistics Textiles""".split()
INSTITUTIONS = [["United", "Nations"], ["European", "Commission"], ["World", "Bank"], ["Red", "Cross"],
                ["Central", "Bank"], ["Supreme", "Court"], ["Interior", "Ministry"], ["National", "Assembly"],
                ["Reuters"], ["Parliament"], ["Senate"], ["UNESCO"], ["NATO"], ["OPEC"]]
CLUB_SUFFIXES = ["United", "Rovers", "City", "Athletic", "Wanderers", "Albion"]
CITIES = """Lisbon Geneva Nairobi Osaka Lima Oslo Cairo Dublin Hanoi Quito Perth Tallinn Accra Bogota Seoul Krakow
Porto Valencia Toronto Denver Madrid Athens Vienna Helsinki Lagos Manila Jakarta Havana Montreal Riga Marseille
Munich Naples Ankara Tunis Dakar Santiago Auckland Glasgow Bergen""".split()
MULTI_CITIES = [["Buenos", "Aires"], ["Rio", "de", "Janeiro"], ["Hong", "Kong"], ["San", "Diego"],
                ["Cape", "Town"], ["Kuala", "Lumpur"], ["New", "Delhi"], ["Tel", "Aviv"], ["Mexico", "City"],
                ["Sao", "Paulo"], ["Las", "Palmas"], ["St", "Petersburg"]]
COUNTRIES = """Brazil Kenya Norway Japan Chile Canada Egypt Ireland Vietnam Peru Poland Ghana Spain Austria Finland
Nigeria Indonesia Cuba Latvia France Germany Italy Turkey Tunisia Senegal Argentina Portugal Sweden Denmark Morocco
Hungary Greece Colombia Ecuador Estonia""".split()
MULTI_COUNTRIES = [["New", "Zealand"], ["South", "Africa"], ["Costa", "Rica"], ["Sri", "Lanka"],
                   ["United", "States"], ["Czech", "Republic"], ["Saudi", "Arabia"], ["South", "Korea"]]
NATIONALITIES = """Brazilian Kenyan Norwegian Japanese Chilean Canadian Egyptian Irish Vietnamese Peruvian Polish
Ghanaian Spanish Austrian Finnish Nigerian Indonesian Cuban Latvian French German Italian Turkish Tunisian
Senegalese Argentine Portuguese Swedish Danish Moroccan Hungarian Greek Colombian Ecuadorean Estonian""".split()
EVENTS = [["World", "Cup"], ["Olympic", "Games"], ["Harvest", "Festival"], ["Winter", "Classic"], ["Grand", "Prix"],
          ["Open", "Championship"], ["Spring", "Marathon"], ["Film", "Festival"], ["Davis", "Cup"],
          ["Nations", "League"], ["Masters"], ["Derby"]]
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()

# sentence patterns: {SLOT} expands to tagged tokens, everything else is one O token per word
PATTERNS = [
    "{PER} , the chief executive of {ORG} , said on {DAY} that profits would rise .",
    "{ORG} shares fell {NUM} percent in {CITY} after the {NAT} regulator opened an inquiry .",
    "{PER} scored twice as {CLUB} beat {CLUB} {SCORE} in {CITY} .",
    "Police in {CITY} said {NUM} people were hurt when a bus crashed near the border with {COUNTRY} .",
    "The {NAT} government will send {PER} to the talks in {CITY} next week .",
    "{PER} won the {EVENT} in {CITY} on {DAY} .",
    "{ORG} agreed to buy {ORG} for {NUM} million dollars , the companies said .",
    "{COUNTRY} 's foreign minister {PER} met {NAT} officials in {CITY} .",
    "Speaking in {CITY} , {LASTNAME} said the {EVENT} would go ahead as planned .",
    "Heavy rain flooded parts of {COUNTRY} on {DAY} , forcing {ORG} to close its plant near {CITY} .",
    "{PER} , who joined {ORG} in {YEAR} , will lead its office in {CITY} .",
    "Analysts at {ORG} expect the {NAT} economy to grow {NUM} percent this year .",
    "The {EVENT} opens in {CITY} on {MONTH} {NUM} .",
    "{LASTNAME} told reporters in {CITY} that {ORG} had no plans to leave {COUNTRY} .",
    "Results of the {EVENT} : {PER} ( {COUNTRY} ) {NUM} , {PER} ( {COUNTRY} ) {NUM} .",
    "{CLUB} manager {PER} was fined after the match against {CLUB} .",
    "{NAT} and {NAT} troops began joint exercises near {CITY} .",
    "A spokesman for {ORG} in {CITY} declined to comment .",
    "{PER} arrived in {COUNTRY} on {DAY} for a three-day visit .",
    "Trading on the {CITY} stock exchange was quiet on {DAY} .",
    "{ORG} said it would cut {NUM} jobs at its factories in {COUNTRY} and {COUNTRY} .",
    "The {NAT} champion {PER} lost to {PER} in the final of the {EVENT} .",
    "{LASTNAME} : \" We will not give up before the {EVENT} . \"",
    "Flights between {CITY} and {CITY} were cancelled because of fog .",
    "{ORG} , based in {CITY} , makes parts for the {NAT} car industry .",
    "{PER} ( {NUM} ) , a former minister , died in {CITY} on {DAY} .",
    "The {INST} urged {COUNTRY} to release {PER} .",
    "{INST} officials in {CITY} said the report would be published in {MONTH} .",
    "{PER} and {PER} will represent {COUNTRY} at the {EVENT} .",
    "Prices rose {NUM} percent in the third quarter , the statistics office said .",
    "The meeting ended on {DAY} without an agreement .",
    "Fans waited for hours outside the stadium before the final .",
    "{LASTNAME} , {NUM} , has played for {CLUB} since {YEAR} .",
    "Exports from {COUNTRY} to the {NAT} market doubled last year , {ORG} said .",
]


class Pools:
    """Name lists split so that held-out names appear only in the validation and test sentences."""

    def __init__(self, rng: random.Random):
        self.train: dict[str, list] = {}
        self.held: dict[str, list] = {}
        for kind, items in (("first", FIRST), ("last", LAST), ("org", ORG_ROOTS), ("city", CITIES + MULTI_CITIES),
                            ("country", COUNTRIES + MULTI_COUNTRIES), ("nat", NATIONALITIES), ("event", EVENTS),
                            ("inst", INSTITUTIONS)):
            items = [x if isinstance(x, list) else [x] for x in items]
            rng.shuffle(items)
            cut = max(1, len(items) * 2 // 3)
            self.train[kind], self.held[kind] = items[:cut], items[cut:]

    def pick(self, rng: random.Random, kind: str, held_out: bool) -> list[str]:
        pool = self.held[kind] if held_out and self.held[kind] and rng.random() < 0.7 else self.train[kind]
        return list(rng.choice(pool))


def _entity(words: list[str], kind: str) -> list[tuple[str, str]]:
    return [(w, f"{'B' if i == 0 else 'I'}-{kind}") for i, w in enumerate(words)]


def _slot(rng: random.Random, pools: Pools, slot: str, held: bool) -> list[tuple[str, str]]:
    if slot == "PER":
        first, last = pools.pick(rng, "first", held), pools.pick(rng, "last", held)
        return _entity(first + last if rng.random() < 0.85 else last, "PER")
    if slot == "LASTNAME":
        return _entity(pools.pick(rng, "last", held), "PER")
    if slot == "ORG":
        root = pools.pick(rng, "org", held)
        return _entity(root + ([rng.choice(ORG_SUFFIXES)] if rng.random() < 0.8 else []), "ORG")
    if slot == "INST":
        return _entity(pools.pick(rng, "inst", held), "ORG")
    if slot == "CLUB":
        return _entity(pools.pick(rng, "city", held) + [rng.choice(CLUB_SUFFIXES)], "ORG")
    if slot == "CITY":
        return _entity(pools.pick(rng, "city", held), "LOC")
    if slot == "COUNTRY":
        return _entity(pools.pick(rng, "country", held), "LOC")
    if slot == "NAT":
        return _entity(pools.pick(rng, "nat", held), "MISC")
    if slot == "EVENT":
        words = pools.pick(rng, "event", held)
        if rng.random() < 0.4:  # "the Brazilian Grand Prix"
            words = pools.pick(rng, "nat", held) + words
        return _entity(words, "MISC")
    if slot == "DAY":
        return [(rng.choice(DAYS), "O")]
    if slot == "MONTH":
        return [(rng.choice(MONTHS), "O")]
    if slot == "NUM":
        return [(str(rng.choice([rng.randint(2, 99), rng.randint(100, 999), round(rng.uniform(0.1, 9.9), 1)])), "O")]
    if slot == "YEAR":
        return [(str(rng.randint(1985, 2025)), "O")]
    if slot == "SCORE":
        return [(f"{rng.randint(1, 5)}-{rng.randint(0, 4)}", "O")]
    raise KeyError(slot)


def sentence(rng: random.Random, pools: Pools, pattern: str, held: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for word in pattern.split():
        if word.startswith("{") and word.endswith("}"):
            out.extend(_slot(rng, pools, word[1:-1], held))
        else:
            out.append((word, "O"))
    return out


def generate(seed: int = SEED) -> dict[str, list[list[tuple[str, str]]]]:
    """Every split's sentences as (token, IOB2 tag) pairs; the same seed gives the same sentences."""
    rng = random.Random(seed)
    pools = Pools(rng)
    out: dict[str, list[list[tuple[str, str]]]] = {}
    seen: set[tuple] = set()
    for split, size in SPLITS.items():
        rows: list[list[tuple[str, str]]] = []
        while len(rows) < size:
            s = sentence(rng, pools, rng.choice(PATTERNS), held=split != "train")
            key = tuple(w for w, _ in s)
            if key in seen:
                continue
            seen.add(key)
            rows.append(s)
        out[split] = rows
    return out


def write(folder: Path = HERE, seed: int = SEED) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, rows in generate(seed).items():
        lines: list[str] = []
        for i, s in enumerate(rows):
            if i % DOC_SENTENCES == 0:
                lines += ["-DOCSTART- O", ""]
            lines += [f"{w} {t}" for w, t in s] + [""]
        (folder / f"{split}.txt").write_text("\n".join(lines), encoding="utf-8")
        sizes[split] = len(rows)
    return sizes


if __name__ == "__main__":
    for split, n in write().items():
        print(f"{HERE / (split + '.txt')}: {n} sentences")
