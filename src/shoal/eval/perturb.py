"""Input perturbations for robustness: typos, case changes, whitespace and identifier renaming (for Python code).

Each one edits a small, fixed share of its targets (its edit budget) at places drawn from a seeded generator, so
the same (document, seed) always gives the same text, and different seeds give different edits of the same size,
which is what the adversarial search chooses among. A perturbation that does not apply to a document (identifier
renaming of text that is not Python) returns None.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import re
import tokenize
from collections.abc import Callable

import numpy as np

WORD = re.compile(r"[A-Za-z]{3,}")
SPACING = re.compile(r"(?<=\S) (?=\S)|\n")
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
NEIGHBOURS = {c: row[max(i - 1, 0):i] + row[i + 1:i + 2] for row in KEYBOARD_ROWS for i, c in enumerate(row)}
PROTECTED_NAMES = set(dir(builtins)) | set(keyword.kwlist) | {"self", "cls"}


def _edit_spans(text: str, spans: list[tuple[int, int]], rng: np.random.Generator, share: float,
                edit: Callable[[str, np.random.Generator], str]) -> str | None:
    """Replace `share` of `spans` (at least one) by `edit(original, rng)`."""
    if not spans:
        return None
    count = max(1, round(share * len(spans)))
    chosen = sorted(rng.choice(len(spans), size=min(count, len(spans)), replace=False))
    parts, last = [], 0
    for i in chosen:
        start, end = spans[i]
        parts += [text[last:start], edit(text[start:end], rng)]
        last = end
    return "".join(parts) + text[last:]


def _typo(word: str, rng: np.random.Generator) -> str:
    while True:  # swapping two equal letters changes nothing: draw again
        i = int(rng.integers(1, len(word) - 1))  # an interior letter: the first one is kept, as people mostly do
        kind = int(rng.integers(4))
        if kind == 0:  # swap with the next letter
            edited = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif kind == 1:  # drop it
            edited = word[:i] + word[i + 1:]
        elif kind == 2:  # double it
            edited = word[:i] + word[i] + word[i:]
        else:  # hit a neighbouring key
            near = NEIGHBOURS[word[i].lower()]
            replacement = near[int(rng.integers(len(near)))]
            edited = word[:i] + (replacement.upper() if word[i].isupper() else replacement) + word[i + 1:]
        if edited != word:
            return edited


def typos(text: str, rng: np.random.Generator) -> str | None:
    """One keyboard typo (swap, drop, double, neighbouring key) in 2% of the words of three letters or more."""
    return _edit_spans(text, [m.span() for m in WORD.finditer(text)], rng, 0.02, _typo)


def _recase(word: str, rng: np.random.Generator) -> str:
    options = [w for w in (word.upper(), word.lower(), word.capitalize()) if w != word]
    return options[int(rng.integers(len(options)))]


def case(text: str, rng: np.random.Generator) -> str | None:
    """5% of the words upper-cased, lower-cased or capitalised (whichever changes them)."""
    return _edit_spans(text, [m.span() for m in WORD.finditer(text)], rng, 0.05, _recase)


def _respace(gap: str, rng: np.random.Generator) -> str:
    if gap == " ":
        return "  "
    return " \n" if rng.integers(2) else "\n\n"  # a trailing space or an extra blank line


def whitespace(text: str, rng: np.random.Generator) -> str | None:
    """5% of the single spaces between words doubled and of the line ends given a trailing space or a blank line."""
    return _edit_spans(text, [m.span() for m in SPACING.finditer(text)], rng, 0.05, _respace)


def identifiers(text: str, rng: np.random.Generator) -> str | None:
    """A quarter of the names a Python document binds (at least one) renamed consistently to `v<number>`: the
    program means the same, only the names are unfamiliar. Names that can be reached from outside the document's
    own code are kept: attributes and class members (`obj.name`), keyword arguments (`f(name=...)`), names in
    f-strings (not tokenized before Python 3.12), builtins, keywords and dunders."""
    try:
        tree = ast.parse(text)
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return None
    bound, kept = set(), set(PROTECTED_NAMES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        if isinstance(node, ast.ClassDef):  # methods and class attributes are used as obj.name
            for member in node.body:
                targets = member.targets if isinstance(member, ast.Assign) else [getattr(member, "target", member)]
                kept.update(getattr(t, "id", getattr(t, "name", None)) for t in targets)
        elif isinstance(node, ast.Attribute):
            kept.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            kept.add(node.arg)
        elif isinstance(node, ast.JoinedStr):
            kept.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    names = sorted(n for n in bound - kept if not n.startswith("__"))
    if not names:
        return None
    chosen = rng.choice(names, size=max(1, round(0.25 * len(names))), replace=False)
    used = {t.string for t in tokens if t.type == tokenize.NAME}
    fresh = (f"v{i}" for i in range(10**6) if f"v{i}" not in used)
    mapping = {str(name): next(fresh) for name in chosen}
    line_starts = np.cumsum([0] + [len(line) + 1 for line in text.split("\n")])  # tokenize's rows split at \n
    spans, previous = [], None
    for t in tokens:
        if t.type == tokenize.NAME and t.string in mapping and not (previous and previous.string == "."):
            start = int(line_starts[t.start[0] - 1]) + t.start[1]
            spans.append((start, start + len(t.string)))
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            previous = t
    return _edit_spans(text, spans, rng, 1.0, lambda name, _: mapping[name])


PERTURBATIONS: dict[str, Callable[[str, np.random.Generator], str | None]] = {
    "typos": typos, "case": case, "whitespace": whitespace, "identifiers": identifiers}


def perturb(text: str, kind: str, seed: int, document: int) -> str | None:
    """`kind` applied to `text` with edits drawn from (seed, document)."""
    return PERTURBATIONS[kind](text, np.random.default_rng([seed, document]))
