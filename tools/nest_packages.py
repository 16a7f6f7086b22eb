"""Rewrite imports of the repository's storage/ and pipelines/ to sisa.storage and sisa.pipelines.

    python tools/nest_packages.py          # rewrite in place; prints what changed
    python tools/nest_packages.py --check  # exit 1 if anything would change (CI, after a merge)

The repository keeps storage/, pipelines/ and sisa/ at its top; the wheel installs them as one
package, sisa (pyproject.toml maps the folders with [tool.setuptools.package-dir]), so that no
generic top-level name (`storage`, `pipelines`) lands in a user's site-packages. Code must
therefore import them by their installed names. This script is the one mechanical step that
does it: idempotent (a second run changes nothing), so it can run again after merging a branch
written against the old names. It rewrites, in every .py file of the packages, tests,
benchmarks and tools:

- `from storage... import` / `from pipelines... import` → `from sisa.storage...` / `from sisa.pipelines...`
- `import storage.x as y` → `import sisa.storage.x as y` (a bare `import storage.x` would change the
  bound name: reported, left for a person)
- module names in string literals, "pipelines.cli" / 'storage.fs.X' → "sisa.pipelines.cli" ...
  (the CLI's verb table, mock targets, subprocess `-m` arguments), and the console script in
  pyproject.toml;

then sorts the moved imports and re-wraps long lines with ruff (the venv's, else PATH's).

Paths (`storage/errors.py`) and prose are left as they are. tests/test_architecture.py speaks of
the folders and reads both spellings: it is skipped.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("sisa", "pipelines", "storage", "tests", "benchmarks", "tools", "docs")
SKIP = {"tests/test_architecture.py", "tools/nest_packages.py"}
NAMES = "storage|pipelines"

FROM = re.compile(rf"^(\s*)from ({NAMES})((?:\.\w+)*) import ", re.M)
IMPORT_AS = re.compile(rf"^(\s*)import ({NAMES})((?:\.\w+)*) as (\w+)", re.M)
BARE_IMPORT = re.compile(rf"^\s*import ({NAMES})\b(?!.* as )", re.M)
QUOTED = re.compile(rf"(?<![\w.])([\"'])({NAMES})([.:]\w)")
DASH_M = re.compile(rf"([\"']-m[\"'],\s*[\"'])({NAMES})([\"'.])")


def rewrite(text: str) -> str:
    text = FROM.sub(r"\1from sisa.\2\3 import ", text)
    text = IMPORT_AS.sub(r"\1import sisa.\2\3 as \4", text)
    text = QUOTED.sub(r"\1sisa.\2\3", text)
    return DASH_M.sub(r"\1sisa.\2\3", text)


def files() -> list[Path]:
    out = [p for folder in FOLDERS if (ROOT / folder).is_dir() for p in sorted((ROOT / folder).rglob("*.py"))]
    return [p for p in out if str(p.relative_to(ROOT)) not in SKIP] + [ROOT / "pyproject.toml"]


def tidy(paths: list[Path]) -> None:
    """Re-sort the imports the rewrite moved and re-wrap lines it lengthened (ruff, as `make lint`)."""
    ruff = Path(sys.executable).with_name("ruff")
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    if ruff is None:
        print("ruff not found: run `ruff check --fix --select I` and `ruff format` on them", file=sys.stderr)
        return
    subprocess.run([ruff, "check", "--fix", "--select", "I", "--quiet", *map(str, paths)], cwd=ROOT, check=False)
    subprocess.run([ruff, "format", "--quiet", *map(str, paths)], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    changed, bare = [], []
    for path in files():
        text = path.read_text()
        new = rewrite(text)
        rel = str(path.relative_to(ROOT))
        bare += [f"{rel}: {m.group(0).strip()}" for m in BARE_IMPORT.finditer(new) if path.suffix == ".py"]
        if new != text:
            changed.append(rel)
            if not args.check:
                path.write_text(new)
    if changed and not args.check:
        tidy([ROOT / c for c in changed if c.endswith(".py")])
    verb = "would change" if args.check else "changed"
    print(f"{len(changed)} file(s) {verb}" + "".join(f"\n  {c}" for c in changed))
    if bare:
        print("bare imports to rewrite by hand (`import x.y` binds `x`):\n  " + "\n  ".join(bare), file=sys.stderr)
    return 1 if (args.check and changed) or bare else 0


if __name__ == "__main__":
    sys.exit(main())
