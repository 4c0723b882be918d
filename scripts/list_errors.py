"""Write the generated part of ``docs/errors.md``: every error a user can meet, by module.

The source is read with :mod:`ast`: every ``raise SomeError(message)`` and every call of
the argument checks of ``scorekit._validate`` (``check_int("steps", ...)`` and so on)
becomes one row, with the message as a pattern (``{...}`` stands for a value filled in
at run time), the function it is in, the cause and what to do. Usage::

    python scripts/list_errors.py            # rewrite docs/errors.md between the markers
    python scripts/list_errors.py --check    # exit 1 when docs/errors.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "scorekit"
DOC = ROOT / "docs" / "errors.md"
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"

CHECKS = {
    "check_positive": "`{name}` must be a number / must be finite and > 0 (or >= 0)",
    "check_int": "`{name}` must be an integer >= {minimum}",
    "check_choice": "`{name}` must be one of ...; got ...",
    "check_tensor": "`{name}` must be a torch.Tensor / floating-point / at least N dimension(s)",
    "check_finite": "`{name}` contains N non-finite value(s) (NaN or inf)",
    "check_range": "`{name}` must lie in [low, high], got values in [...]",
    "check_generator": "`{name}` must be a torch.Generator or None",
    "check_instance": "`{name}` must be a ...",
    "check_process": "`{name}` must be a Process",
}

# (regex on the message pattern, cause, what to do); the first match wins
ADVICE = [
    (r"not found", "a path that does not exist", "check the path (and the working folder)"),
    (
        r"cannot read|not a valid|is not JSON|not valid JSON|not a scorekit checkpoint|"
        r"has format|unpickle|Python objects",
        "a damaged, truncated or foreign file",
        "re-create the file; scorekit only reads safetensors, JSON, .npy/.npz without pickles, "
        "CSV and PNG/JPEG",
    ),
    (
        r"non-finite|NaN|infinite",
        "NaN or inf values",
        "find where they come from "
        "(torch.isfinite); in training: a lower learning rate, gradient clipping, or "
        "--on-nonfinite skip",
    ),
    (
        r"does not match|has .* config|trained on",
        "a checkpoint of another network or data shape",
        "use the settings the checkpoint was trained with (see its .json)",
    ),
    (
        r"already holds a checkpoint|no checkpoint",
        "the output folder and --resume disagree",
        "pass --resume to continue, or another --out",
    ),
    (
        r"unknown|must be one of|expected name|not in",
        "a name scorekit does not know",
        "use one of the names the message lists",
    ),
    (
        r"shape|dimension|columns|mixed sizes|divisible",
        "arrays of the wrong shape",
        "reshape the input as the message says",
    ),
    (
        r"no examples|holds .* example|at least",
        "empty input",
        "give at least the number of examples or values the message asks for",
    ),
    (
        r"must be|must have|must lie|needs|need ",
        "an argument outside its domain",
        "pass a value of the type and range the message names",
    ),
]


def _pattern(node: ast.expr, names: dict | None = None) -> str:
    """The message of a string expression; ``names`` maps local variables assigned a
    string (in the same function) to their expressions."""
    names = names or {}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                out.append(v.value)
            elif isinstance(v.value, ast.Name) and v.value.id in names:
                out.append(_pattern(names[v.value.id]))
            else:
                out.append("{…}")
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _pattern(node.left, names) + _pattern(node.right, names)
    if isinstance(node, ast.Name):
        return _pattern(names[node.id]) if node.id in names else "{" + node.id + "}"
    return "{…}"


def _string_assignments(func: ast.AST) -> dict:
    out = {}
    for n in ast.walk(func):
        if (
            isinstance(n, ast.Assign)
            and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Name)
            and isinstance(n.value, (ast.JoinedStr, ast.Constant))
            and (not isinstance(n.value, ast.Constant) or isinstance(n.value.value, str))
        ):
            out[n.targets[0].id] = n.value
    return out


def _advice(msg: str) -> tuple[str, str]:
    for rx, cause, todo in ADVICE:
        if re.search(rx, msg, re.I):
            return cause, todo
    return "see the message", "follow the message"


def _rows(path: Path) -> list[tuple[str, str, str, str, str]]:
    tree = ast.parse(path.read_text())
    rows = []

    def visit(node, func, names):
        for child in ast.iter_child_nodes(node):
            name, inner = func, names
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = child.name if func is None else f"{func}.{child.name}"
                inner = _string_assignments(child)
            if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call):
                exc = child.exc
                kind = exc.func.id if isinstance(exc.func, ast.Name) else ast.unparse(exc.func)
                msg = _pattern(exc.args[0], inner) if exc.args else ""
                rows.append((name or "(module)", kind, " ".join(msg.split())))
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and child.func.id in CHECKS
                and child.args
            ):
                arg = _pattern(child.args[0])
                minimum = next(
                    (ast.unparse(k.value) for k in child.keywords if k.arg == "minimum"), "1"
                )
                msg = CHECKS[child.func.id].format(name=arg, minimum=minimum)
                rows.append((name or "(module)", "ValueError", msg))
            visit(child, name, inner)

    visit(tree, None, {})
    out, seen = [], set()
    for func, kind, msg in rows:
        if kind in ("NotImplementedError", "AssertionError", "Hang") or (func, msg) in seen:
            continue
        seen.add((func, msg))
        out.append((func, kind, msg, *_advice(msg)))
    return out


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def generate() -> str:
    parts = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "_validate.py":
            continue
        rows = _rows(path)
        if not rows:
            continue
        mod = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        parts.append(f"\n### `{mod.removesuffix('.__init__')}`\n")
        parts.append("| where | error | message pattern | cause | what to do |")
        parts.append("|---|---|---|---|---|")
        for func, kind, msg, cause, todo in rows:
            parts.append(
                f"| `{func}` | {kind} | {_cell(msg) or '(no message)'} | {cause} | {todo} |"
            )
    return "\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = ap.parse_args()
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{generate()}{END}{tail}"
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/list_errors.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
