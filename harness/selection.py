"""Step 3: choose cases with pytest-style expressions: ``-k`` on ids, ``-m`` on markers.

Grammar: ``expr := term ('or' term)*``, ``term := factor ('and' factor)*``,
``factor := 'not' factor | '(' expr ')' | word``. A word is any run of characters other than
whitespace and parentheses (so ids such as ``tp2pp1->tp1pp1`` are words).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from harness.records import Case

Matcher = Callable[[Callable[[str], bool]], bool]  # given "does this word apply?", the verdict

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


class ExpressionError(ValueError):
    pass


def compile_expression(text: str) -> Matcher:
    tokens = _TOKEN.findall(text)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ExpressionError(f"unexpected end of expression {text!r}")
        position += 1
        return tokens[position - 1]

    def chain(word: str, operand: Callable[[], Matcher], combine: Callable[[Iterator[bool]], bool]) -> Matcher:
        parts = [operand()]
        while peek() == word:
            take()
            parts.append(operand())
        return lambda has: combine(p(has) for p in parts)

    def expr() -> Matcher:
        return chain("or", term, any)

    def term() -> Matcher:
        return chain("and", factor, all)

    def factor() -> Matcher:
        token = take()
        if token == "not":
            inner = factor()
            return lambda has: not inner(has)
        if token == "(":
            inner = expr()
            if take() != ")":
                raise ExpressionError(f"missing ')' in {text!r}")
            return inner
        if token in (")", "and", "or"):
            raise ExpressionError(f"unexpected {token!r} in {text!r}")
        return lambda has: has(token)

    matcher = expr()
    if peek() is not None:
        raise ExpressionError(f"unexpected {peek()!r} in {text!r}")
    return matcher


def select(cases: list[Case], keyword: str | None = None, markexpr: str | None = None) -> list[Case]:
    by_keyword = compile_expression(keyword) if keyword else None
    by_marker = compile_expression(markexpr) if markexpr else None
    chosen = []
    for case in cases:
        # against the key (``id[platform]``, what ``harness list`` prints), so a listed line pastes into -k
        if by_keyword and not by_keyword(lambda word, c=case: word.lower() in c.key.lower()):
            continue
        if by_marker and not by_marker(lambda word, c=case: word in c.markers):
            continue
        chosen.append(case)
    return chosen
