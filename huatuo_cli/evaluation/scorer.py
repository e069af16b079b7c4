"""The official choice extraction of HuatuoGPT-Vision's evaluation (`scorer.py`, `match_choice`), in
huatuo's own code. Read it in docs/eval.md; the rules, in order:

1. `answer is X` (the strict prompt's phrase): the first and last such letter;
2. a standalone option letter (preceded by start, a non-word character, `is `, a CJK character, ...,
   followed by a non-word character, a CJK character or the end; never `A ` used as an article);
3. an option's text found in the response (case-insensitive): first = earliest found, last = latest;
4. otherwise the option closest to the response by difflib's ratio (ties go to the later option, as
   the official loop compares with `>=`).

Each rule yields a first and a last choice; huatuo scores the first (the issue's protocol), and
reports the official per-data-set maximum of first- and last-choice accuracy beside it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMN"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
#: HuatuoGPT-o1's answers end in this section; the official scorer reads only what follows it
FINAL_RESPONSE = "## Final Response\n\n"
_STRICT = re.compile(r"(answer is\s*?)([A-N])", re.S)


@dataclass(frozen=True)
class Choice:
    first: str
    last: str
    rule: str  # "answer-is", "letter", "text" or "closest"


def _standalone(n: int) -> re.Pattern[str]:
    return re.compile(r"([\u4e00-\u9fff]|is |是|项|\*|\W|\ |\(|为|^|'|\"|#)(?![aA] )([" + LETTERS[:n]
                      + r"])(\W|[\u4e00-\u9fff]|$)", re.S)


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def closest(options: list[str], text: str) -> int:
    """Index of the option most similar to `text`; a tie (and all-zero similarity) goes to the later one."""
    best, best_score = 0, 0.0
    for i, option in enumerate(options):
        score = similarity(option, text)
        if score >= best_score:
            best, best_score = i, score
    return best


def match_choice(response: str, options: list[str]) -> Choice:
    """The option letter a response chose, by the official rules (module docstring)."""
    if not options or len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options: between 1 and {len(LETTERS)} are scored")
    text = response
    if FINAL_RESPONSE in text:
        text = text.split(FINAL_RESPONSE)[-1]
    found = list(_STRICT.finditer(text))
    if found:
        return Choice(found[0].group(2), found[-1].group(2), "answer-is")
    found = list(_standalone(len(options)).finditer(text))
    if found:
        return Choice(found[0].group(2), found[-1].group(2), "letter")
    lower = text.lower()
    texts = [option.lower() for option in options]
    present = [i for i, option in enumerate(texts) if option in lower]
    if present:
        first = min(present, key=lambda i: lower.index(texts[i]))
        last = max(present, key=lambda i: lower.rindex(texts[i]))
        return Choice(LETTERS[first], LETTERS[last], "text")
    index = closest(texts, lower)
    return Choice(LETTERS[index], LETTERS[index], "closest")


def prompt(question: str, options: list[str]) -> str:
    """The official prompt: the question, one `A. text` line per option, the instruction."""
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join([question, *lines, INSTRUCTION])


def answer_letter(answer: str, options: list[str]) -> str | None:
    """The letter of the correct option (`answer` is its text; a bare letter is accepted too)."""
    if answer in options:
        return LETTERS[options.index(answer)]
    stripped = answer.strip()
    for i, option in enumerate(options):
        if option.strip().lower() == stripped.lower():
            return LETTERS[i]
    if len(stripped) == 1 and stripped.upper() in LETTERS[:len(options)]:
        return stripped.upper()
    return None


def score_line(line: dict[str, object]) -> dict[str, object]:
    """Score one saved line (`options`, `answer`, `response`): the line with `answer_letter`,
    `choice`, `choice_last`, `rule` and `correct` set. Any tool's responses can be scored this way."""
    options = [str(o) for o in line["options"]]  # type: ignore[attr-defined]
    choice = match_choice(str(line.get("response") or ""), options)
    letter = answer_letter(str(line["answer"]), options)
    return {**line, "answer_letter": letter, "choice": choice.first, "choice_last": choice.last, "rule": choice.rule,
            "correct": choice.first == letter, "correct_last": choice.last == letter}
