"""Pattern strings: one symbol per block, `(...)xN` repeats a group, spaces ignored.

`"(R- L-)x12"` -> R - L - R - L - ... (48 symbols). Megatron-LM's `*` is accepted as `A`.
"""

from __future__ import annotations

from dataclasses import dataclass

DIGITS = "0123456789"  # ASCII only: a repeat count of '４' is an error
RESERVED = set("()x" + DIGITS + " \t\n")
MAX_DEPTH = 32


@dataclass
class PatternError(Exception):
    """A syntax error at character `offset` of the pattern."""

    message: str
    offset: int

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Group:
    """A parsed pattern: items are symbols (str) or nested groups, repeated `repeat` times."""

    items: tuple
    repeat: int = 1

    def count(self, weights: dict[str, int] | None = None) -> int:
        """Number of symbols after expansion (each counted `weights[symbol]` times, 1 by
        default), computed without expanding."""
        weights = weights or {}
        inner = sum(
            weights.get(i[0], 1) if isinstance(i, tuple) else i.count(weights) for i in self.items
        )
        return inner * self.repeat

    def expand(self) -> list[tuple[str, int]]:
        """(symbol, offset in the pattern) for every block, in order."""
        out: list[tuple[str, int]] = []
        for _ in range(self.repeat):
            for item in self.items:
                out.extend([item] if isinstance(item, tuple) else item.expand())
        return out


def parse(text: str, symbols: set[str]) -> Group:
    """Parse `text` against the known `symbols`; raises PatternError with the offset."""
    pos = 0

    def group(depth: int, closing: bool) -> Group:
        nonlocal pos
        items: list = []
        while pos < len(text):
            ch = text[pos]
            if ch.isspace():
                pos += 1
            elif ch == "(":
                if depth >= MAX_DEPTH:
                    raise PatternError(f"groups nested deeper than {MAX_DEPTH}", pos)
                open_at = pos
                pos += 1
                inner = group(depth + 1, True)
                if not inner.items:
                    raise PatternError("empty group", open_at)
                items.append(Group(inner.items, _repeat()))
            elif ch == ")":
                if not closing:
                    raise PatternError("unmatched ')'", pos)
                pos += 1
                return Group(tuple(items))
            elif ch in symbols:
                items.append((ch, pos))
                pos += 1
            elif ch == "x":
                raise _stray_x(text, pos, items)
            else:
                known = " ".join(sorted(symbols))
                raise PatternError(f"unknown symbol {ch!r} (known: {known})", pos)
        if closing:
            raise PatternError("unclosed '('", len(text))
        return Group(tuple(items))

    def _repeat() -> int:
        nonlocal pos
        save = pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == "x":
            pos += 1
            while pos < len(text) and text[pos].isspace():
                pos += 1
            start = pos
            while pos < len(text) and text[pos] in DIGITS:
                pos += 1
            if start == pos:
                raise PatternError("expected a repeat count after 'x'", pos)
            if pos - start > 6:
                raise PatternError("repeat count too large", start)
            count = int(text[start:pos])
            if count < 1:
                raise PatternError("repeat count must be >= 1", start)
            return count
        pos = save
        return 1

    _check_parentheses(text)
    result = group(0, False)
    if not result.items:
        raise PatternError("empty pattern", 0)
    return result


def _check_parentheses(text: str) -> None:
    """An unmatched ')' or an unclosed '(' is reported before anything inside."""
    opened: list[int] = []
    for i, ch in enumerate(text):
        if ch == "(":
            opened.append(i)
        elif ch == ")":
            if not opened:
                raise PatternError("unmatched ')'", i)
            opened.pop()
    if opened:
        raise PatternError("unclosed '(': no ')' closes it", opened[-1])


def _stray_x(text: str, pos: int, items: list) -> PatternError:
    """`x` where no group ends: `Rx3` wants `(R)x3`."""
    end = pos + 1
    while end < len(text) and (text[end].isspace() or text[end] in DIGITS):
        end += 1
    count = "".join(text[pos + 1 : end].split()) or "N"
    if items and isinstance(items[-1], tuple):
        sym = items[-1][0]
        return PatternError(
            f"'x' repeats a group: write ({sym})x{count}, not {sym}x{count} ('x' is not a symbol)",
            pos,
        )
    return PatternError(f"'x' repeats a group and follows its ')': write (...)x{count}", pos)


def caret(text: str, offset: int, width: int = 60) -> str:
    """The pattern (around `offset` when it is long) and a caret under character `offset`,
    for error messages."""
    start = max(0, min(offset - width // 2, len(text) - width))
    shown = text[start : start + width]
    lead, tail = ("..." if start else ""), ("..." if start + width < len(text) else "")
    return f"\n    {lead}{shown}{tail}\n    {' ' * (len(lead) + offset - start)}^"
