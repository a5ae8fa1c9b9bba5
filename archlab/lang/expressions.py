"""Safe arithmetic expressions for numeric params (`4 * d_model`, `d_model // 128`).

Numbers, `+ - * / // % **`, parentheses, `min`, `max` and names bound by the caller
(the numeric `model` fields). Nothing else is evaluated: the text is parsed with `ast`
and walked by hand, never passed to `eval`.
"""

from __future__ import annotations

import ast
import operator

MAX_LENGTH = 200
MAX_MAGNITUDE = 10**15

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS = {"min": min, "max": max}


class ExpressionError(ValueError):
    """The expression is not allowed or cannot be evaluated."""


def evaluate(text: str, names: dict[str, int | float]) -> int | float:
    """Evaluate `text` with `names` bound; raises ExpressionError with a readable reason."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        raise ExpressionError(f"not a valid expression: {text!r}") from None
    return _check(_eval(tree.body, names))


def _check(value: int | float) -> int | float:
    if abs(value) > MAX_MAGNITUDE:
        raise ExpressionError(f"value out of range (|x| > {MAX_MAGNITUDE:.0e})")
    return value


def _eval(node: ast.AST, names: dict[str, int | float]) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ExpressionError(f"only numbers are allowed, not {node.value!r}")
        return _check(node.value)
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ExpressionError(f"unknown name {node.id!r} (known: {known})")
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > MAX_MAGNITUDE):
            raise ExpressionError("exponent too large")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ExpressionError("division by zero") from None
        except OverflowError:
            raise ExpressionError(f"value out of range (|x| > {MAX_MAGNITUDE:.0e})") from None
        if isinstance(result, complex):
            raise ExpressionError("result is not a real number")
        return _check(result)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and node.args
    ):
        return _FUNCTIONS[node.func.id](_eval(a, names) for a in node.args)
    raise ExpressionError(f"not allowed in an expression: {ast.unparse(node)!r}")


def as_int(value: int | float) -> int:
    """An integer result, or ExpressionError if the value is not whole."""
    if isinstance(value, float):
        if not value.is_integer():
            raise ExpressionError(f"must be an integer (the expression gives {value})")
        return int(value)
    return value
