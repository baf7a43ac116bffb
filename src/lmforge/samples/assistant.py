"""Generator of lmforge's embedded instruction-tuning sample: short instructions with their answers and a few
multi-turn dialogues between a user and a small assistant, as chat ``messages``.

Everything is made by this module from word lists written for lmforge, not taken from any corpus. The answers
follow the instruction in a regular way (an opposite, a plural, a colour, the next weekday, a small sum, an
animal's sound, a sentence made polite, a fact from a short list), so that a tiny model trained from scratch for a
minute or two visibly learns the format: it answers in one sentence that repeats the question's words, and stops.
Some conversations carry a system message; some instructions come with an input (Alpaca's ``input``, joined to
the instruction after a blank line); about one in six rows is a dialogue of three to six exchanges (a greeting,
the assistant's name, one or two questions, thanks, goodbye), every assistant turn of which is trained.
The files under ``samples/assistant/`` are its output (JSON lines ``{"messages": [...]}``); regenerate them with

    python -m lmforge.samples.assistant
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "assistant"
SPLITS = {"train": 3000, "validation": 160, "test": 160}
SEED = 20261213

OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
             ("early", "late"), ("old", "young"), ("full", "empty"), ("loud", "quiet"), ("open", "closed"),
             ("high", "low"), ("wet", "dry"), ("hard", "soft"), ("long", "short"), ("strong", "weak"),
             ("rich", "poor"), ("clean", "dirty"), ("near", "far"), ("heavy", "light"), ("thick", "thin"),
             ("warm", "cool"), ("easy", "difficult"), ("first", "last"), ("inside", "outside")]
PLURALS = [("cat", "cats"), ("dog", "dogs"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"),
           ("city", "cities"), ("leaf", "leaves"), ("tooth", "teeth"), ("bus", "buses"), ("foot", "feet"),
           ("baby", "babies"), ("knife", "knives"), ("glass", "glasses"), ("man", "men"), ("woman", "women"),
           ("book", "books"), ("tree", "trees"), ("sheep", "sheep"), ("fish", "fish"), ("goose", "geese"),
           ("party", "parties"), ("wolf", "wolves"), ("dish", "dishes"), ("person", "people")]
COLOURS = [("a ripe banana", "yellow"), ("the sky on a clear day", "blue"), ("fresh grass", "green"),
           ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red"), ("a carrot", "orange"),
           ("a lemon", "yellow"), ("milk", "white"), ("a lime", "green"), ("a strawberry", "red"),
           ("chocolate", "brown"), ("an orange", "orange"), ("the night sky", "black"), ("a frog", "green"),
           ("a cloud", "white"), ("a plum", "purple"), ("a fire truck", "red")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ANIMALS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
           ("owl", "hoot"), ("pig", "oink"), ("horse", "neigh"), ("frog", "croak"), ("bee", "buzz"),
           ("lion", "roar"), ("snake", "hiss"), ("rooster", "cock-a-doodle-doo"), ("mouse", "squeak")]
# (curt request, polite request)
REQUESTS = [("Give me the salt.", "Could you please give me the salt?"),
            ("Close the window.", "Could you please close the window?"),
            ("Send me the report.", "Could you please send me the report?"),
            ("Turn off the music.", "Could you please turn off the music?"),
            ("Call me tomorrow.", "Could you please call me tomorrow?"),
            ("Wait here.", "Could you please wait here?"),
            ("Help me with this box.", "Could you please help me with this box?"),
            ("Open the door.", "Could you please open the door?"),
            ("Bring me a glass of water.", "Could you please bring me a glass of water?"),
            ("Check my homework.", "Could you please check my homework?"),
            ("Speak more slowly.", "Could you please speak more slowly?"),
            ("Lend me your pen.", "Could you please lend me your pen?")]
FACTS = [("How many days are in a week?", "There are seven days in a week."),
         ("How many legs does a spider have?", "A spider has eight legs."),
         ("How many months are in a year?", "There are twelve months in a year."),
         ("What do bees make?", "Bees make honey."),
         ("Where do fish live?", "Fish live in water."),
         ("What do we use an umbrella for?", "We use an umbrella to stay dry in the rain."),
         ("What do cows drink?", "Cows drink water."),
         ("How many hours are in a day?", "There are twenty-four hours in a day."),
         ("What falls from clouds when it rains?", "Drops of water fall from the clouds."),
         ("What do you call a baby cat?", "A baby cat is called a kitten."),
         ("What do you call a baby dog?", "A baby dog is called a puppy."),
         ("Which season comes after winter?", "Spring comes after winter.")]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
SYSTEMS = ["You are a helpful assistant.", "You are Forge, a small and friendly assistant.",
           "Answer in one short sentence."]
GREETINGS = ["Hi!", "Hello!", "Hey there.", "Good morning!", "Hello, assistant."]
GREETING_ANSWERS = ["Hello! How can I help you today?", "Hi! What can I do for you?"]
NAME_QUESTIONS = ["What is your name?", "Who are you?", "What should I call you?"]
NAME_ANSWER = "My name is Forge. I am a small assistant."
THANKS = ["Thank you!", "Thanks a lot.", "Great, thanks.", "Thanks!"]
THANKS_ANSWERS = ["You are welcome! Is there anything else?", "Happy to help! Anything else?"]
BYES = ["No, that is all. Bye!", "Nothing else, goodbye.", "That's all, bye."]
BYE_ANSWER = "Goodbye, have a nice day!"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def instruction(rng: random.Random) -> tuple[str, str]:
    """One (user message, answer) pair."""
    kind = rng.choice(["opposite", "plural", "colour", "day", "sum", "animal", "polite", "fact"])
    if kind == "opposite":
        a, b = rng.choice(OPPOSITES)
        if rng.random() < 0.5:
            a, b = b, a
        q = rng.choice([f"What is the opposite of {a}?", f"Tell me the opposite of {a}.", f"Opposite of {a}?"])
        return q, f"The opposite of {a} is {b}."
    if kind == "plural":
        a, b = rng.choice(PLURALS)
        q = rng.choice([f"What is the plural of {a}?", f"Give me the plural of the word {a}.", f"Plural of {a}?"])
        return q, f"The plural of {a} is {b}."
    if kind == "colour":
        thing, colour = rng.choice(COLOURS)
        q = rng.choice([f"What colour is {thing}?", f"Which colour does {thing} have?"])
        return q, f"{_cap(thing)} is {colour}."
    if kind == "day":
        i = rng.randrange(7)
        if rng.random() < 0.5:
            q = rng.choice([f"Which day comes after {DAYS[i]}?", f"What day is it after {DAYS[i]}?"])
            return q, f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."
        q = rng.choice([f"Which day comes before {DAYS[i]}?", f"What day is it before {DAYS[i]}?"])
        return q, f"{DAYS[(i - 1) % 7]} comes before {DAYS[i]}."
    if kind == "sum":
        a, b = rng.randrange(10), rng.randrange(10)
        q = rng.choice([f"What is {a} plus {b}?", f"Add {a} and {b}.", f"How much is {NUMBERS[a]} plus {NUMBERS[b]}?"])
        return q, f"{_cap(NUMBERS[a])} plus {NUMBERS[b]} is {NUMBERS[a + b]}."
    if kind == "animal":
        animal, sound = rng.choice(ANIMALS)
        q = rng.choice([f"What sound does a {animal} make?", f"What does a {animal} say?"])
        return q, f"A {animal} says {sound}."
    if kind == "polite":
        curt, polite = rng.choice(REQUESTS)
        return rng.choice(["Make this sentence polite.", "Rewrite this request politely."]) + "\n\n" + curt, polite
    return rng.choice(FACTS)


def conversation(rng: random.Random) -> list[dict]:
    """A single instruction (most rows) or a dialogue of a few exchanges."""
    msgs: list[dict] = []
    if rng.random() < 0.2:
        msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})

    def turn(user: str, answer: str) -> None:
        msgs.extend([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])

    if rng.random() < 5 / 6:
        turn(*instruction(rng))
        return msgs
    turn(rng.choice(GREETINGS), rng.choice(GREETING_ANSWERS))
    if rng.random() < 0.5:
        turn(rng.choice(NAME_QUESTIONS), NAME_ANSWER)
    for _ in range(rng.choice([1, 1, 2])):
        turn(*instruction(rng))
    turn(rng.choice(THANKS), rng.choice(THANKS_ANSWERS))
    if rng.random() < 0.5:
        turn(rng.choice(BYES), BYE_ANSWER)
    return msgs


def generate(seed: int = SEED) -> dict[str, list[list[dict]]]:
    rng = random.Random(seed)
    out: dict[str, list[list[dict]]] = {}
    for split, n in SPLITS.items():
        out[split] = [conversation(rng) for _ in range(n)]
    return out


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for split, rows in generate().items():
        with open(HERE / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for msgs in rows:
                f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} conversations -> {HERE / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
