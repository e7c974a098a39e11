"""The CSS selectors ``HTMLRewriter.on(selector, ...)`` accepts: parsed once, matched against open elements.

The grammar is the subset Cloudflare documents for HTMLRewriter (lol-html's): ``*``, ``E``, ``.class``,
``#id``, ``[attr]`` with ``= ~= ^= $= *= |=`` and the ``i``/``s`` flags, ``:first-child``,
``:nth-child(an+b)``, ``:first-of-type``, ``:nth-of-type(an+b)``, ``:not(compound, ...)``, the descendant
(``E F``) and child (``E > F``) combinators, and comma-separated lists. A streaming rewriter sees an element
before its later siblings, so what needs the future (``+``, ``~``, ``:last-child``, ``:nth-last-*``,
``:has``) is refused with an error naming it, as on Cloudflare. The grammar is this small, so it is parsed
here rather than through a general CSS library.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class SelectorError(TypeError):
    """A selector HTMLRewriter cannot use; the message names the selector and the part at fault."""


class MatchTarget(Protocol):
    """What matching reads of an element: its name, attributes and place among its siblings."""

    name: str
    child_index: int  # 1-based, among element siblings seen so far
    type_index: int  # 1-based, among element siblings of the same name

    def attribute(self, name: str) -> str | None: ...


_IDENT = r"-?(?:[_a-zA-Z\u0080-\U0010ffff]|\\[^\n])(?:[-_a-zA-Z0-9\u0080-\U0010ffff]|\\[^\n])*"
_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
_TOKEN = re.compile(rf"""
    (?P<ws>\s+) | (?P<ident>{_IDENT}) | (?P<string>{_STRING}) | (?P<number>[+-]?\d+)
  | (?P<op>[~^$*|]?=) | (?P<punct>[*#.\[\]:(),>+~])
""", re.VERBOSE)
_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6}\s?|[^\n])")
_NTH = re.compile(r"^(?:(?P<odd>odd)|(?P<even>even)|(?P<a>[+-]?\d*)n(?:(?P<sign>[+-])(?P<b>\d+))?|(?P<only>[+-]?\d+))$")
_FUTURE_PSEUDOS = ("last-child", "last-of-type", "nth-last-child", "nth-last-of-type", "only-child",
                   "only-of-type", "has", "empty", "root")


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        return chr(int(body, 16)) if re.fullmatch(r"[0-9a-fA-F]{1,6}\s?", body) else body
    return _ESCAPE.sub(one, text)


@dataclass(frozen=True)
class AttributeTest:
    name: str
    operator: str  # "" (present), "=", "~=", "^=", "$=", "*=", "|="
    value: str = ""
    ignore_case: bool = False

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return False
        expected = self.value
        if self.ignore_case:
            actual, expected = actual.lower(), expected.lower()
        match self.operator:
            case "":
                return True
            case "=":
                return actual == expected
            case "~=":
                return expected in actual.split()
            case "^=":
                return bool(expected) and actual.startswith(expected)
            case "$=":
                return bool(expected) and actual.endswith(expected)
            case "*=":
                return bool(expected) and expected in actual
            case _:  # "|="
                return actual == expected or actual.startswith(expected + "-")


@dataclass(frozen=True)
class NthTest:
    """``:nth-child(an+b)`` (or ``-of-type``): the 1-based index is a*k + b for some k >= 0."""

    a: int
    b: int
    of_type: bool

    def matches(self, target: MatchTarget) -> bool:
        index = target.type_index if self.of_type else target.child_index
        if self.a == 0:
            return index == self.b
        steps, remainder = divmod(index - self.b, self.a)
        return remainder == 0 and steps >= 0


@dataclass(frozen=True)
class Compound:
    """One element's tests, as in ``div.note#main[lang|="en"]:not(.hidden)``."""

    tag: str | None = None  # None: any element
    attributes: tuple[AttributeTest, ...] = ()
    positions: tuple[NthTest, ...] = ()
    negations: tuple[Compound, ...] = ()

    def matches(self, target: MatchTarget) -> bool:
        return ((self.tag is None or self.tag == target.name)
                and all(test.matches(target.attribute(test.name)) for test in self.attributes)
                and all(test.matches(target) for test in self.positions)
                and not any(negation.matches(target) for negation in self.negations))


@dataclass(frozen=True)
class ComplexSelector:
    """Compounds joined by combinators, left to right: ``combinators[i]`` sits between compound i and i+1."""

    compounds: tuple[Compound, ...]
    combinators: tuple[str, ...]  # " " (descendant) or ">" (child)

    def matches(self, chain: Sequence[MatchTarget]) -> bool:
        """``chain``: the open elements from the root down to the element being matched (last)."""
        return self._matches_at(len(self.compounds) - 1, chain, len(chain) - 1)

    def _matches_at(self, k: int, chain: Sequence[MatchTarget], position: int) -> bool:
        if not self.compounds[k].matches(chain[position]):
            return False
        if k == 0:
            return True
        if self.combinators[k - 1] == ">":
            return position > 0 and self._matches_at(k - 1, chain, position - 1)
        return any(self._matches_at(k - 1, chain, ancestor) for ancestor in range(position - 1, -1, -1))


@dataclass(frozen=True)
class Selector:
    """A parsed selector list; ``Selector.parse("main > p.note, h1")``."""

    text: str
    alternatives: tuple[ComplexSelector, ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        if not isinstance(text, str):
            raise SelectorError(f"HTMLRewriter selector must be a string, not {type(text).__name__}")
        return cls(text, _Parser(text).selector_list())

    def matches(self, chain: Sequence[MatchTarget]) -> bool:
        return any(alternative.matches(chain) for alternative in self.alternatives)


class _Parser:
    """Recursive descent over the tokens of one selector string."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                self.fail(f"unexpected {text[position]!r} at position {position}")
            self.tokens.append((match.lastgroup or "", match.group()))
            position = match.end()
        self.index = 0

    def fail(self, why: str) -> None:
        raise SelectorError(f"HTMLRewriter can't use the selector {self.text!r}: {why}")

    def peek(self, skip_ws: bool = False) -> tuple[str, str]:
        index = self.index
        while skip_ws and index < len(self.tokens) and self.tokens[index][0] == "ws":
            index += 1
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.index += 1
        return token

    def skip_ws(self) -> None:
        while self.peek()[0] == "ws":
            self.index += 1

    def expect(self, value: str) -> None:
        self.skip_ws()
        if self.take()[1] != value:
            self.fail(f"expected {value!r}")

    def selector_list(self) -> tuple[ComplexSelector, ...]:
        alternatives = [self.complex()]
        while self.peek(skip_ws=True)[1] == ",":
            self.skip_ws()
            self.take()
            alternatives.append(self.complex())
        if self.peek(skip_ws=True)[0] != "end":
            self.fail(f"unexpected {self.peek(skip_ws=True)[1]!r}")
        return tuple(alternatives)

    def complex(self) -> ComplexSelector:
        self.skip_ws()
        compounds, combinators = [self.compound()], []
        while True:
            had_ws = self.peek()[0] == "ws"
            kind, value = self.peek(skip_ws=True)
            if value in ("+", "~"):
                self.fail(f"the sibling combinator {value!r} is not supported (an element's later siblings "
                          "are not known while it streams)")
            if value == ">":
                self.skip_ws()
                self.take()
                self.skip_ws()
                combinators.append(">")
            elif had_ws and kind not in ("end",) and value not in (",", ")"):
                self.skip_ws()
                combinators.append(" ")
            else:
                return ComplexSelector(tuple(compounds), tuple(combinators))
            compounds.append(self.compound())

    def compound(self, in_negation: bool = False) -> Compound:
        tag: str | None = None
        attributes: list[AttributeTest] = []
        positions: list[NthTest] = []
        negations: list[Compound] = []
        kind, value = self.peek()
        if kind == "ident":
            self.take()
            tag = _unescape(value).lower()
        elif value == "*":
            self.take()
        elif value not in ("#", ".", "[", ":"):
            self.fail("expected an element name, '*', '#id', '.class', '[attribute]' or ':pseudo-class'"
                      + (f", not {value!r}" if value else " at the end"))
        while (value := self.peek()[1]) in ("#", ".", "[", ":"):
            self.take()
            if value == "#":
                attributes.append(AttributeTest("id", "=", self.ident("an id after '#'")))
            elif value == ".":
                attributes.append(AttributeTest("class", "~=", self.ident("a class name after '.'")))
            elif value == "[":
                attributes.append(self.attribute())
            else:
                self.pseudo(positions, negations, in_negation)
        return Compound(tag, tuple(attributes), tuple(positions), tuple(negations))

    def ident(self, what: str) -> str:
        kind, value = self.take()
        if kind != "ident":
            self.fail(f"expected {what}")
        return _unescape(value)

    def attribute(self) -> AttributeTest:
        self.skip_ws()
        name = self.ident("an attribute name").lower()
        self.skip_ws()
        kind, operator = self.take()
        if operator == "]":
            return AttributeTest(name, "")
        if kind != "op":
            self.fail(f"expected ']' or an operator such as '=' after [{name}")
        self.skip_ws()
        kind, raw = self.take()
        if kind == "string":
            value = _unescape(raw[1:-1])
        elif kind in ("ident", "number"):
            value = _unescape(raw)
        else:
            self.fail(f"expected a value after [{name}{operator}")
        self.skip_ws()
        ignore_case = False
        if self.peek()[0] == "ident" and self.peek()[1].lower() in ("i", "s"):
            ignore_case = self.take()[1].lower() == "i"
        self.expect("]")
        return AttributeTest(name, operator, value, ignore_case)

    def pseudo(self, positions: list[NthTest], negations: list[Compound], in_negation: bool) -> None:
        name = self.ident("a pseudo-class name after ':'").lower()
        if name == "first-child":
            positions.append(NthTest(0, 1, of_type=False))
        elif name == "first-of-type":
            positions.append(NthTest(0, 1, of_type=True))
        elif name in ("nth-child", "nth-of-type"):
            positions.append(self.nth(name))
        elif name == "not":
            if in_negation:
                self.fail(":not() inside :not() is not supported")
            self.expect("(")
            self.skip_ws()
            negations.append(self.compound(in_negation=True))
            while self.peek(skip_ws=True)[1] == ",":
                self.skip_ws()
                self.take()
                self.skip_ws()
                negations.append(self.compound(in_negation=True))
            self.expect(")")
        elif name in _FUTURE_PSEUDOS:
            self.fail(f":{name} is not supported (it depends on what follows the element in the stream)")
        else:
            self.fail(f":{name} is not supported; HTMLRewriter knows :first-child, :nth-child(), "
                      ":first-of-type, :nth-of-type() and :not()")

    def nth(self, name: str) -> NthTest:
        self.expect("(")
        parts = []
        while self.peek()[1] not in (")", ""):
            parts.append(self.take()[1])
        self.expect(")")
        argument = "".join(parts).replace(" ", "").lower()
        match = _NTH.match(argument)
        if match is None:
            self.fail(f":{name}({argument}) needs an argument such as 3, odd, even or 2n+1")
        if match["odd"]:
            a, b = 2, 1
        elif match["even"]:
            a, b = 2, 0
        elif match["only"] is not None:
            a, b = 0, int(match["only"])
        else:
            a = {"": 1, "+": 1, "-": -1}.get(match["a"], None)
            a = int(match["a"]) if a is None else a
            b = int(match["b"] or 0) * (-1 if match["sign"] == "-" else 1)
        return NthTest(a, b, of_type=name == "nth-of-type")
