"""Column names that tables of texts use in the wild, in the order lmforge tries them when the config names
none: the first text, the second text of a pair, and the label or score. Shared by the tasks that read
tables of texts (text classification, sentence embeddings)."""

TEXT_COLUMNS = ("text", "sentence", "sentence1", "question1", "premise", "question", "review", "content",
                "document", "tweet", "query")
PAIR_COLUMNS = ("text_pair", "sentence2", "question2", "hypothesis", "passage", "answer")
LABEL_COLUMNS = ("label", "labels", "score", "similarity", "sentiment", "target", "class", "gold_label", "y")
