"""CoLA training data for the demo adapter: the GLUE CoLA train set plus rule-made ungrammatical minimal pairs.

CoLA's 8,551 training sentences are 70% acceptable and its unacceptable ones are mostly argument-structure
violations from the linguistics literature; a small sentence-embedding backbone trained on them alone learns
little about agreement and verb forms ("The book was wrote by John."). This script keeps every GLUE row and
adds, for acceptable sentences where one of the rules below applies, ONE corrupted copy labelled
unacceptable (a minimal pair: the original stays in the data as acceptable):

- subject-verb agreement: is<->are, was<->were, has<->have, does<->do, doesn't<->don't
- participle vs simple past of irregular verbs: "was written" -> "was wrote", "John wrote" -> "John written"
- over-regularised past tense: went -> goed, took -> taked, ...
- a verb form after a modal or do-support: "can swim" -> "can swims", "did not see" -> "did not saw"
- two adjacent words swapped (word order)

The rule is drawn per sentence with random.Random(0), among the morphological rules when any applies
(word order otherwise); at most TARGET sentences are corrupted so that
unacceptable rows (real + synthetic) roughly equal acceptable ones. The dev set is the GLUE CoLA dev set,
copied unchanged, so the dev score is comparable to any GLUE CoLA number.

    python benchmarks/cola_augment.py SRC_DIR OUT_DIR     # e.g. ../shared/data/glue/CoLA runs/demo/data/cola-aug
    python benchmarks/cola_augment.py SRC_DIR OUT_DIR --duplicate-unacceptable --synthetic 1500 --no-word-order
"""
from __future__ import annotations

import hashlib
import random
import re
import shutil
from pathlib import Path

AGREE = {"is": "are", "are": "is", "was": "were", "were": "was", "has": "have", "have": "has",
         "does": "do", "do": "does", "doesn't": "don't", "don't": "doesn't"}
# participle -> simple past (irregular verbs whose two forms differ)
PART_PAST = {"written": "wrote", "taken": "took", "given": "gave", "eaten": "ate", "seen": "saw", "done": "did",
             "gone": "went", "broken": "broke", "spoken": "spoke", "chosen": "chose", "stolen": "stole",
             "driven": "drove", "forgotten": "forgot", "known": "knew", "thrown": "threw", "drawn": "drew",
             "fallen": "fell", "begun": "began", "sung": "sang", "swum": "swam", "ridden": "rode", "risen": "rose",
             "frozen": "froze", "hidden": "hid", "bitten": "bit", "shown": "showed", "grown": "grew",
             "flown": "flew", "worn": "wore", "torn": "tore", "woken": "woke", "beaten": "beat",
             "come": "came", "run": "ran", "become": "became"}
PAST_PART = {v: k for k, v in PART_PAST.items() if k not in ("come", "run", "become", "beaten", "shown")}
OVERREG = {"went": "goed", "took": "taked", "wrote": "writed", "ate": "eated", "gave": "gived", "saw": "seed",
           "came": "comed", "ran": "runned", "knew": "knowed", "thought": "thinked", "bought": "buyed",
           "brought": "bringed", "found": "finded", "told": "telled", "said": "sayed", "made": "maked",
           "got": "getted", "left": "leaved", "sang": "singed", "broke": "breaked", "spoke": "speaked",
           "drove": "drived", "fell": "falled", "caught": "catched", "taught": "teached", "felt": "feeled",
           "kept": "keeped", "slept": "sleeped", "sent": "sended", "built": "builded", "sat": "sitted"}
BASE_PAST = {"see": "saw", "go": "went", "eat": "ate", "take": "took", "give": "gave", "write": "wrote",
             "come": "came", "run": "ran", "know": "knew", "buy": "bought", "think": "thought", "make": "made",
             "find": "found", "tell": "told", "say": "said", "get": "got", "leave": "left", "bring": "brought",
             "sing": "sang", "break": "broke", "speak": "spoke", "drive": "drove", "fall": "fell", "have": "had",
             "be": "was", "do": "did", "read": "read", "put": "put", "hit": "hit", "cut": "cut", "send": "sent",
             "feel": "felt", "keep": "kept", "sleep": "slept", "build": "built", "sit": "sat", "win": "won"}
MODALS = {"can", "could", "will", "would", "should", "must", "may", "might", "shall"}
DO_SUPPORT = {"did", "does", "do", "didn't", "doesn't", "don't"}
SKIP_AFTER = {"not", "n't", "also", "never", "always", "only", "just", "still", "even", "really", "certainly",
              "probably", "have", "you", "he", "she", "it", "we", "they", "i", "john", "mary", "the", "a", "an",
              "be", "so", "too", "easily", "often", "ever", "all", "both", "either", "to"}
TOKEN = re.compile(r"[A-Za-z']+|[^A-Za-z'\s]+")


def _case(like: str, word: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def _verb_s(word: str) -> str:
    if word == "be":
        return "is"
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    return word + "s"


def _past_of(word: str) -> str:
    if word in BASE_PAST:
        return BASE_PAST[word]
    return word + ("d" if word.endswith("e") else "ed")


def corruptions(sentence: str) -> list[tuple[str, str]]:
    """Every (rule, corrupted sentence) this sentence admits."""
    words = sentence.split(" ")
    low = [re.sub(r"[^a-z']", "", w.lower()) for w in words]
    out: list[tuple[str, str]] = []

    def replaced(i: int, new: str) -> str:
        w = words[i]
        core = re.sub(r"[^A-Za-z']", "", w)
        return " ".join(words[:i] + [w.replace(core, _case(core, new), 1)] + words[i + 1:])

    for i, w in enumerate(low):
        if w in AGREE:
            out.append(("agreement", replaced(i, AGREE[w])))
        if w in PART_PAST and i > 0 and low[i - 1] in {"was", "were", "been", "be", "is", "are", "has", "have",
                                                         "had", "being", "got", "get"}:
            out.append(("participle", replaced(i, PART_PAST[w])))
        if w in PAST_PART and i > 0 and low[i - 1] not in {"was", "were", "been", "be", "is", "are", "has", "have",
                                                          "had"}:
            out.append(("past", replaced(i, PAST_PART[w])))
        if w in OVERREG:
            out.append(("overregular", replaced(i, OVERREG[w])))
        if (w in MODALS or w in DO_SUPPORT) and i + 1 < len(low):
            j = i + 1 if low[i + 1] not in ("not", "n't") else i + 2
            if j < len(low) and low[j].isalpha() and low[j] not in SKIP_AFTER and len(low[j]) > 1:
                new = _verb_s(low[j]) if w in MODALS or random.Random(i).random() < 0.5 else _past_of(low[j])
                if w in DO_SUPPORT:
                    new = _past_of(low[j])
                out.append(("verb_form", replaced(j, new)))
    if len(words) >= 4:
        i = random.Random(sentence).randrange(1, len(words) - 2)  # not the first word, not the last word
        a, b = words[i], words[i + 1]
        if a.lower() != b.lower() and a.isalpha() and b.isalpha():
            out.append(("word_order", " ".join(words[:i] + [b, a] + words[i + 2:])))
    return [(rule, s) for rule, s in out if s != sentence]


def augment(src: Path, out: Path, duplicate_unacceptable: bool = False, synthetic: int | None = None,
            word_order: bool = True) -> None:
    rows = [line.rstrip("\n").split("\t") for line in (src / "train.tsv").read_text().splitlines()]
    acceptable = [r for r in rows if r[1] == "1"]
    if duplicate_unacceptable:  # every real unacceptable row twice (oversampling the minority class)
        rows = [x for r in rows for x in ([r, r] if r[1] == "0" else [r])]
    target = sum(r[1] == "1" for r in rows) - sum(r[1] == "0" for r in rows)  # balance the labels
    if synthetic is not None:
        target = synthetic
    existing = {r[3] for r in rows}
    rng = random.Random(0)
    order = list(range(len(acceptable)))
    rng.shuffle(order)
    added, counts = [], {}
    for k in order:
        if len(added) >= target:
            break
        r = acceptable[k]
        options = [(rule, s) for rule, s in corruptions(r[3]) if s not in existing and (word_order or rule != "word_order")]
        if not options:
            continue
        morph = [o for o in options if o[0] != "word_order"]  # prefer the morphological rules
        rule, sentence = rng.choice(morph or options)
        existing.add(sentence)
        counts[rule] = counts.get(rule, 0) + 1
        added.append([f"aug-{rule}", "0", "*", sentence])
    out.mkdir(parents=True, exist_ok=True)
    data = "".join("\t".join(r) + "\n" for r in rows + added)
    (out / "train.tsv").write_text(data)
    shutil.copyfile(src / "dev.tsv", out / "dev.tsv")
    print(f"{out / 'train.tsv'}: {len(rows)} GLUE rows + {len(added)} synthetic unacceptable {counts}, "
          f"sha256 {hashlib.sha256(data.encode()).hexdigest()}")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--duplicate-unacceptable", action="store_true", help="write every real unacceptable row twice")
    p.add_argument("--synthetic", type=int, help="synthetic rows to add (default: as many as balance the labels)")
    p.add_argument("--no-word-order", action="store_true", help="only the morphological rules")
    a = p.parse_args()
    augment(a.src, a.out, a.duplicate_unacceptable, a.synthetic, not a.no_word_order)
