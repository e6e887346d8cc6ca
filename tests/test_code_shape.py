"""Every function and method in the package is short enough to read at once.

A function's length is its lines of code: its source lines, from ``def`` to its last line, less blank
lines, comment-only lines and its own docstring. A nested function's lines count in its parent too, so
a long function does not get shorter by hiding its body in closures.
"""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "refusion"
MAX_LINES = 60
# tokens that are not code: a line holding only these is blank or a comment
LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
          tokenize.ENDMARKER, tokenize.ENCODING}


class Length(NamedTuple):
    path: Path
    line: int
    name: str
    lines: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line} {self.name}: {self.lines} lines"


def code_lines(source: str) -> set[int]:
    """The numbers of the lines that hold code. Tokens, not text, decide: a string spanning several
    lines holds all of them, even a blank one or one starting with '#'."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in LAYOUT:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[int]:
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return set(range(first.lineno, first.end_lineno + 1))
    return set()


def lines_of_code(node: ast.FunctionDef | ast.AsyncFunctionDef, code: set[int]) -> int:
    """The lines of code of one function, given ``code_lines`` of its file."""
    return len(set(range(node.lineno, node.end_lineno + 1)) & code - docstring_lines(node))


def function_lengths(path: Path) -> Iterator[Length]:
    """Every function and method of one file, named by its enclosing classes and functions."""
    source = path.read_text(encoding="utf-8")
    code = code_lines(source)

    def visit(node: ast.AST, prefix: str) -> Iterator[Length]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield Length(path, child.lineno, prefix + child.name, lines_of_code(child, code))
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(ast.parse(source, str(path)), "")


def package_lengths() -> list[Length]:
    return [length for path in sorted(PACKAGE.rglob("*.py")) for length in function_lengths(path)]


def test_the_counter_skips_blanks_comments_and_the_docstring_but_not_strings():
    source = '''
def f(x):
    """One line.

    More lines of the docstring.
    """
    # a comment

    y = x + 1   # a comment after code
    text = """
# not a comment: inside a string

"""
    def inner():
        """Counted in f, not in inner."""
        return y
    return text
'''
    code = code_lines(source)
    outer = ast.parse(source).body[0]
    inner = outer.body[-2]
    assert lines_of_code(outer, code) == 10   # def, y, the four lines of text, inner's four, return
    assert lines_of_code(inner, code) == 2


def test_no_function_is_longer_than_the_limit():
    long = [length for length in package_lengths() if length.lines > MAX_LINES]
    if long:
        pytest.fail(f"{len(long)} functions above {MAX_LINES} lines of code (split them):\n"
                    + "\n".join(map(str, long)), pytrace=False)
