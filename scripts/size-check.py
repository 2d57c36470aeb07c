#!/usr/bin/env python3
"""Lists Rust files over a line budget and functions over a length budget.

A function is counted from the line holding `fn name` to its closing brace at
the same indentation, both inclusive (rustfmt layout assumed). Declarations
without a body (`fn f();`) are skipped. Usage:

    scripts/size-check.py [ROOT] [--file-max N] [--fn-max N]

Exits 1 when anything is over budget.
"""
import argparse
import os
import re
import sys

FN = re.compile(r"^(\s*)(?:[\w()]+\s+)*?fn\s+(\$?\w+)")


def functions(lines):
    """Yields (name, first line, last line), 1-based, for each fn with a body."""
    for i, line in enumerate(lines):
        if line.lstrip().startswith("//"):
            continue
        m = FN.match(line)
        if not m:
            continue
        indent, name = m.group(1), m.group(2)
        # Find where the signature ends: a `{` opens the body, a `;` ends a
        # bodiless declaration.
        j = i
        while j < len(lines):
            code = lines[j].split("//")[0].rstrip()
            if "{" in code:
                break
            if code.endswith(";"):
                j = None
                break
            j += 1
        if j is None or j >= len(lines):
            continue
        body_line = lines[j].split("//")[0].rstrip()
        # Body opened and closed on one line: `fn f() { x }`.
        if body_line.count("{") == body_line.count("}") and body_line.endswith("}"):
            yield name, i + 1, j + 1
            continue
        close = indent + "}"
        for k in range(j + 1, len(lines)):
            if lines[k].rstrip() == close or (
                lines[k].startswith(close) and not lines[k][len(indent)].isspace()
            ):
                yield name, i + 1, k + 1
                break


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root", nargs="?", default="server/src")
    p.add_argument("--file-max", type=int, default=800)
    p.add_argument("--fn-max", type=int, default=120)
    args = p.parse_args()
    over = False
    for dirpath, _, files in sorted(os.walk(args.root)):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            if len(lines) > args.file_max:
                print(f"FILE {path}: {len(lines)} lines")
                over = True
            for name, start, end in functions(lines):
                n = end - start + 1
                if n > args.fn_max:
                    print(f"FN   {path}:{start}: {name} ({n} lines, {start}-{end})")
                    over = True
    if not over:
        print(f"ok: no file over {args.file_max} lines, no fn over {args.fn_max} lines")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
