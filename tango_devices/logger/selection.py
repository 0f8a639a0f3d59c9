"""Which devices and attributes the logger archives (no tango).

Patterns are matched case-insensitively, part by part, against
``domain/family/member/attribute`` with shell wildcards (``*``, ``?``,
``[...]``); a ``*`` never crosses a ``/``. A pattern with fewer than four
parts stands for everything below it: ``bl01`` is ``bl01/*/*/*``,
``bl01/mot/*`` every attribute of every motor. An attribute is archived when
an Include pattern matches it and no Exclude pattern does.

Wildcards are matched by :class:`Glob`, in time linear in the pattern and
bounded by (pattern length x name length), whatever the pattern: fnmatch's
translation to a regular expression is quadratic in the number of ``[``
(30,000 of them took 34 s) and a regular expression with several ``*`` can
backtrack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


class Glob:
    """A shell wildcard pattern (``*``, ``?``, ``[abc]``, ``[a-z]``, ``[!abc]``;
    a ``[`` without its ``]`` is an ordinary character), matched against the
    whole name. The pattern is split at its ``*``: each piece has a fixed
    length (a regular expression without any repetition), the first must
    match at the start, the last at the end, and each one in between at its
    leftmost place after the previous one (which is right when pieces have a
    fixed length). No backtracking across pieces, so no blow-up."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        pieces: list[list[str]] = [[]]  # regex tokens of each piece between stars
        n = len(pattern)
        close = [-1] * (n + 1)  # index of the first "]" at or after i (one pass)
        for i in range(n - 1, -1, -1):
            close[i] = i if pattern[i] == "]" else close[i + 1]
        i = 0
        while i < n:
            c = pattern[i]
            if c == "*":
                pieces.append([])
                i += 1
            elif c == "?":
                pieces[-1].append(".")
                i += 1
            elif c == "[":
                j = i + 1
                if j < n and pattern[j] == "!":
                    j += 1
                if j < n and pattern[j] == "]":
                    j += 1
                k = close[j] if j <= n else -1
                if k < 0:
                    pieces[-1].append(re.escape(c))  # no closing bracket: a plain "["
                    i += 1
                else:
                    pieces[-1].append(_char_class(pattern[i + 1 : k]))
                    i = k + 1
            else:
                pieces[-1].append(re.escape(c))
                i += 1
        self._pieces = [(re.compile("".join(p), re.S), len(p)) for p in pieces]

    def match(self, name: str) -> bool:
        pieces = self._pieces
        if len(pieces) == 1:
            regex, size = pieces[0]
            return len(name) == size and regex.match(name) is not None
        (first, first_len), (last, last_len) = pieces[0], pieces[-1]
        if len(name) < first_len + last_len or first.match(name) is None:
            return False
        pos, stop = first_len, len(name) - last_len
        for regex, size in pieces[1:-1]:
            if size == 0:
                continue
            found = regex.search(name, pos, stop)
            if found is None:
                return False
            pos = found.end()
        return last.match(name, stop) is not None


def _char_class(body: str) -> str:
    """``[...]`` of a glob (without the brackets) as a regex character class."""
    negate = body.startswith("!")
    if negate:
        body = body[1:]
    items = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if lo <= hi:
                items.append(f"{_class_char(lo)}-{_class_char(hi)}")
            i += 3
        else:
            items.append(_class_char(body[i]))
            i += 1
    if not items:
        return "." if negate else "(?!)"
    return "[" + ("^" if negate else "") + "".join(items) + "]"


def _class_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else c


def fnmatchcase(name: str, pattern: str) -> bool:
    """Like :func:`fnmatch.fnmatchcase`, without its worst cases."""
    return Glob(pattern).match(name)


@dataclass(frozen=True)
class Pattern:
    parts: tuple[str, str, str, str]
    text: str

    @classmethod
    def parse(cls, text: str) -> Pattern:
        raw = [p for p in text.strip().lower().strip("/").split("/")]
        if not text.strip() or len(raw) > 4 or any(p == "" for p in raw):
            raise ValueError(
                f"{text!r} is not a pattern: domain[/family[/member[/attribute]]] with wildcards"
            )
        parts = tuple(raw + ["*"] * (4 - len(raw)))
        return cls(parts, text.strip())  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_globs", tuple(Glob(p) for p in self.parts))

    def matches_device(self, device: str) -> bool:
        dparts = device.lower().split("/")
        return len(dparts) == 3 and all(
            g.match(d) for d, g in zip(dparts, self._globs[:3], strict=True)
        )

    def matches(self, device: str, attribute: str) -> bool:
        return self.matches_device(device) and self._globs[3].match(attribute.lower())

    @property
    def whole_devices(self) -> bool:
        return self.parts[3] == "*"


class Selection:
    """Include and exclude lists."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str] = ()) -> None:
        problems = []
        self.include: list[Pattern] = []
        self.exclude: list[Pattern] = []
        for target, texts in ((self.include, include), (self.exclude, exclude)):
            for text in texts:
                if not str(text).strip():
                    continue
                try:
                    target.append(Pattern.parse(str(text)))
                except ValueError as exc:
                    problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))

    def wants_device(self, device: str) -> bool:
        """Could any attribute of ``device`` be archived?"""
        if not any(p.matches_device(device) for p in self.include):
            return False
        return not any(p.whole_devices and p.matches_device(device) for p in self.exclude)

    def wants(self, device: str, attribute: str) -> bool:
        if not any(p.matches(device, attribute) for p in self.include):
            return False
        return not any(p.matches(device, attribute) for p in self.exclude)

    def describe(self) -> str:
        inc = ", ".join(p.text for p in self.include) or "nothing"
        exc = ", ".join(p.text for p in self.exclude)
        return f"include {inc}" + (f"; exclude {exc}" if exc else "")
