"""Which devices and attributes the logger archives (no tango).

Patterns are matched case-insensitively, part by part, against
``domain/family/member/attribute`` with shell wildcards (``*``, ``?``,
``[...]``); a ``*`` never crosses a ``/``. A pattern with fewer than four
parts stands for everything below it: ``bl01`` is ``bl01/*/*/*``,
``bl01/mot/*`` every attribute of every motor. An attribute is archived when
an Include pattern matches it and no Exclude pattern does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase


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

    def matches_device(self, device: str) -> bool:
        dparts = device.lower().split("/")
        return len(dparts) == 3 and all(
            fnmatchcase(d, p) for d, p in zip(dparts, self.parts[:3], strict=True)
        )

    def matches(self, device: str, attribute: str) -> bool:
        return self.matches_device(device) and fnmatchcase(attribute.lower(), self.parts[3])

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
