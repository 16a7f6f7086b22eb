"""The house rules that keep the code base navigable, checked on the source.

Imports point one way (pipelines → sisa → storage), each heavy library has one home, and every
library the code, the tests or the benchmarks import is declared in pyproject.toml.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "sisa", "pipelines")
LAYER = {"storage": 0, "sisa": 1, "pipelines": 2}
# library → the only modules allowed to import it
HOMES = {
    "transformers": {"sisa/model/base.py", "sisa/model/gguf.py"},
    "peft": {"sisa/model/adapters.py"},
    "ray": {"sisa/training/scheduler.py"},
    "mlflow": {"sisa/serving/tracking.py", "sisa/serving/mlflow_model.py"},
    "datasets": {"sisa/data/sources.py"},
    "matplotlib": {"sisa/evidence/report.py"},
    "fastapi": {
        f"sisa/service/{m}.py"
        for m in ("app", "auth", "context", "limits", "model_cache", "privacy", "completions", "audit_page")
    },
    "uvicorn": {"pipelines/serve.py"},
    "boto3": {"storage/s3.py"},
    "botocore": {"storage/s3.py"},
    "starlette": {"sisa/service/app.py"},
    "cryptography": {"sisa/lineage/signing.py"},
}


# The folders storage/ and pipelines/ are installed as sisa.storage and sisa.pipelines
# (pyproject.toml): the rules below speak of them by their folder, whichever name imports them.
NESTED = ("storage", "pipelines")


def canonical(module: str) -> str:
    """`sisa.storage.errors` → `storage.errors`, `sisa.pipelines` → `pipelines`; others unchanged."""
    parts = module.split(".")
    return ".".join(parts[1:]) if len(parts) > 1 and parts[0] == "sisa" and parts[1] in NESTED else module


def _import_from(node: ast.ImportFrom) -> list[str]:
    """The modules an absolute `from X import a, b` may load: X, and X.a for a package X."""
    module = canonical(node.module)
    if module == "sisa":
        names = [a.name for a in node.names if a.name in NESTED]
        return [module, *names] if names else [module]
    return [module]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(canonical(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.update(_import_from(node))
    return out


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    own = LAYER[path.relative_to(ROOT).parts[0]]
    upward = [m for m in _imports(path) if m.split(".")[0] in LAYER and LAYER[m.split(".")[0]] > own]
    assert not upward, f"{path.relative_to(ROOT)} imports {upward}: imports must point pipelines → sisa → storage"


# sisa's subpackages, bottom to top: a module imports only from its own subpackage or one below.
# config.py, offline.py and lazy.py (packages whose names load on first use) sit under all of them.
SISA_LAYERS = ("lineage", "data", "model", "serving", "training", "evidence", "tofu", "forgetting", "service")
SISA_FOUNDATION = {"sisa.config", "sisa.offline", "sisa.lazy", "sisa"}
# The Python API sits over all of them (it calls every subpackage; none calls it).
SISA_TOP = {"sisa.api"}


def _sisa_level(module: str) -> int:
    if module in SISA_FOUNDATION:
        return -1
    if module in SISA_TOP:
        return len(SISA_LAYERS)
    return SISA_LAYERS.index(module.split(".")[1])


def _import_nodes(path: Path) -> list[tuple[str, bool]]:
    """(module, imported inside a function) for every `sisa.*` import of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    local = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "sisa" else [f"sisa.{a.name}" for a in node.names]
        names = [canonical(n) for n in names]
        out += [(n, id(node) in local) for n in names if n.split(".")[0] == "sisa"]
    return out


def test_sisa_has_no_flat_modules() -> None:
    """Every module of sisa/ lives in the subpackage of its concern, but the foundation."""
    flat = {f"sisa.{p.stem}" for p in (ROOT / "sisa").glob("*.py")} - SISA_FOUNDATION - SISA_TOP - {"sisa.__init__"}
    assert not flat, f"modules outside a subpackage: {sorted(flat)}"
    packages = {p.name for p in (ROOT / "sisa").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(SISA_LAYERS), f"subpackages {sorted(packages)} vs the layer table {SISA_LAYERS}"


SISA_MODULES = sorted((ROOT / "sisa").rglob("*.py"))


@pytest.mark.parametrize("path", SISA_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sisa_subpackages_import_downward(path: Path) -> None:
    """lineage < data < model < serving < training < evidence < tofu < forgetting < service; an import
    inside a function follows the same order (it may defer a heavy library, never dodge a layer)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if len(parts) < 3:
        return
    own = SISA_LAYERS.index(parts[1])
    upward = [f"{m}{' (in a function)' if local else ''}" for m, local in _import_nodes(path) if _sisa_level(m) > own]
    assert not upward, f"{path.relative_to(ROOT)} imports {upward} from a subpackage above its own ({parts[1]})"


def test_storage_knows_no_torch() -> None:
    for path in (ROOT / "storage").rglob("*.py"):
        assert not {m for m in _imports(path) if m.split(".")[0] == "torch"}, f"{path} imports torch"


@pytest.mark.parametrize("library", sorted(HOMES))
def test_one_home_per_heavy_library(library: str) -> None:
    users = {str(p.relative_to(ROOT)) for p in _sources() if any(m.split(".")[0] == library for m in _imports(p))}
    assert users <= HOMES[library], (
        f"{library} is imported by {sorted(users - HOMES[library])}; only {sorted(HOMES[library])} may"
    )


SHARED_PIPELINES = {"pipelines.common", "pipelines.cli", "pipelines.request_options"}


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.py")), ids=lambda p: p.name)
def test_verbs_import_no_other_verb(path: Path) -> None:
    """A verb is a recipe over sisa/; what two verbs share lives in sisa/, pipelines/common.py or
    pipelines/request_options.py (forget's and rectify's flags and outputs)."""
    own = f"pipelines.{path.stem}"
    others = {m for m in _imports(path) if m.startswith("pipelines") and m not in SHARED_PIPELINES | {own, "pipelines"}}
    tree = ast.parse(path.read_text())
    others |= {
        f"pipelines.{a.name}"
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and canonical(n.module) == "pipelines"
        for a in n.names
        if f"pipelines.{a.name}" not in SHARED_PIPELINES
    }
    assert not others, f"{path.name} imports other verbs {sorted(others)}"


def test_no_assert_carries_a_side_effect() -> None:
    """`python -O` drops asserts: an assert in library code may only check, never call anything
    that writes. Calls inside an assert are allowed only for pure predicates named here."""
    pure = {"isinstance", "len", "all", "any", "set", "sorted", "callable", "hasattr", "equal"}
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                calls = [c for c in ast.walk(node.test) if isinstance(c, ast.Call)]
                names = {c.func.id if isinstance(c.func, ast.Name) else c.func.attr for c in calls}
                if names - pure:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {sorted(names - pure)}")
    assert not offenders, offenders


def test_no_module_shadows_a_package() -> None:
    """A module named like a well-known package (or a sibling package) breaks imports for whoever
    runs a script next to it; no two modules of sisa/ share a name across its subpackages; and a
    module of pipelines/ shares its name with one of sisa/ only when it is a verb's module, named
    by its verb (`pipelines/versions.py` lists what `sisa/lineage/versions.py` keeps): the helpers
    beside the verbs do not borrow sisa's names."""
    shadowed = {
        "requests",
        "storage",
        "sisa",
        "pipelines",
        "datasets",
        "ray",
        "mlflow",
        "torch",
        "peft",
        "transformers",
        "yaml",
        "json",
        "logging",
        "types",
    }
    modules = [p for d in ("sisa", "pipelines", "storage", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert not [str(p.relative_to(ROOT)) for p in modules if p.stem in shadowed]
    sisa_stems: dict[str, list[str]] = {}
    for p in (ROOT / "sisa").rglob("*.py"):
        if p.stem != "__init__":
            sisa_stems.setdefault(p.stem, []).append(str(p.relative_to(ROOT)))
    assert not {s: ps for s, ps in sisa_stems.items() if len(ps) > 1}, "sisa modules that share a name"
    from pipelines.cli import VERBS

    verb_modules = {module.split(".")[-1] for module, _ in VERBS.values()}
    shared = {p.stem for p in (ROOT / "pipelines").glob("*.py")} & set(sisa_stems)
    assert shared <= verb_modules, (
        f"pipelines modules named like sisa modules, not verbs: {sorted(shared - verb_modules)}"
    )


# verb → (its module when not pipelines/<verb>.py, why)
VERB_MODULE_EXCEPTIONS = {
    "requests": (
        "pipelines.list_requests",
        "a module named `requests` shadows the HTTP library for a script run beside it",
    ),
}


def test_every_verb_lives_in_the_module_of_its_name() -> None:
    """One module per verb, named as the verb (`sisa forget` is pipelines/forget.py), but the
    exceptions above, each with its reason; every other module of pipelines/ is shared by verbs."""
    from pipelines.cli import VERBS

    expected = {verb: VERB_MODULE_EXCEPTIONS.get(verb, (f"pipelines.{verb}", ""))[0] for verb in VERBS}
    assert {verb: canonical(module) for verb, (module, _) in VERBS.items()} == expected
    assert set(VERB_MODULE_EXCEPTIONS) <= set(VERBS), "an exception for a verb that does not exist"
    assert all(why for _, why in VERB_MODULE_EXCEPTIONS.values())
    for module in expected.values():
        assert (ROOT / f"{module.replace('.', '/')}.py").is_file(), module
    # __main__: `python -m sisa.pipelines VERB`, the CLI without its console script
    modules = {f"pipelines.{p.stem}" for p in (ROOT / "pipelines").glob("*.py")} - {
        "pipelines.__init__",
        "pipelines.__main__",
    }
    assert modules - set(expected.values()) == SHARED_PIPELINES, "pipelines modules that are neither a verb nor shared"


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def _third_party_imports(paths: list[Path]) -> dict[str, list[str]]:
    """Top-level third-party module → the files that import it."""
    local = set(LAYER) | {"tests", "benchmarks", "_common"}
    out: dict[str, list[str]] = {}
    for path in paths:
        for module in _imports(path):
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top not in local:
                out.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return out


# The extras whose libraries the packages may import: each only where a verb that needs it loads
# it (HOMES), and named in pipelines.cli.EXTRAS so a user without it is told what to install.
RUNTIME_EXTRAS = ("serve", "demo")


def test_optional_libraries_are_named_by_the_cli() -> None:
    from pipelines.cli import EXTRAS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in RUNTIME_EXTRAS:
        for name in _requirement_names(project["optional-dependencies"][extra]) - {"sisa"}:
            assert EXTRAS.get(name) == extra, f"{name} of the `{extra}` extra is not in pipelines.cli.EXTRAS"
    core = _requirement_names(project["dependencies"])
    assert not core & set(EXTRAS), f"{sorted(core & set(EXTRAS))} are core dependencies and extras at once"


@pytest.mark.parametrize(
    ("folders", "extras"),
    [(PACKAGES, RUNTIME_EXTRAS), (("tests", "benchmarks"), ("test", *RUNTIME_EXTRAS, "benchmarks"))],
    ids=["packages-need-dependencies", "tests-and-benchmarks-need-the-test-extra"],
)
def test_every_imported_library_is_declared(folders: tuple[str, ...], extras: tuple[str, ...]) -> None:
    """A library the code imports is pinned in pyproject.toml itself, not merely pulled in by
    another package (which may drop it in any release)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    for extra in extras:
        declared |= _requirement_names(project["optional-dependencies"][extra])
    distributions = importlib.metadata.packages_distributions()
    paths = sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))
    missing = {}
    for module, users in sorted(_third_party_imports(paths).items()):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = users[:3]
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


# `configs/tiny.yaml`, `sisa/model/base.py`, `tests/helpers.py` ... and README.md-style root documents.
CITED_PATH = re.compile(r"(?<![\w./-])((?:sisa|pipelines|storage|tests|benchmarks|configs)/[\w./-]*[\w]|[A-Z]+\.md)\b")


def test_docs_cite_files_that_exist() -> None:
    """Every repository path a docstring, comment or README names exists (a glob may stand in
    for several)."""
    files = sorted(p for folder in (*PACKAGES, "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
    files += (
        sorted(ROOT.glob("*.md"))
        + sorted((ROOT / "benchmarks").glob("*.md"))
        + sorted((ROOT / "configs").glob("*.yaml"))
        + sorted((ROOT / "docs").rglob("*.md"))
        + sorted((ROOT / "docs").rglob("*.py"))
    )
    dead = []
    for path in files:
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            for cited in CITED_PATH.findall(line):
                cited = cited.rstrip(".")
                if not (ROOT / cited).exists() and not list(ROOT.glob(cited)):
                    dead.append(f"{path.relative_to(ROOT)}:{lineno}: {cited}")
    assert not dead, "paths that do not exist:\n" + "\n".join(dead)


# Modules a verb may import from directly rather than through its subpackage's exports, and why.
DIRECT_IMPORTS = {"sisa.evidence.report": "matplotlib loads only where a report is drawn (sisa demo)"}


@pytest.mark.parametrize(
    "path", sorted([*(ROOT / "pipelines").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]), ids=lambda p: p.name
)
def test_callers_use_the_subpackages_exports(path: Path) -> None:
    """pipelines/ and benchmarks/ take names from `sisa.<subpackage>` (its `__init__` exports
    them), or a subpackage's module as a whole; they do not reach into a module for a name."""
    reach = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = canonical(node.module)
            parts = module.split(".")
            if parts[0] == "sisa" and len(parts) > 2 and module not in DIRECT_IMPORTS:
                reach.append(f"{node.module}: {', '.join(a.name for a in node.names)}")
    assert not reach, f"{path.relative_to(ROOT)} reaches into modules: {reach}; import the names from the subpackage"


@pytest.mark.parametrize("package", SISA_LAYERS)
def test_every_subpackage_says_what_it_owns_and_exports(package: str) -> None:
    import importlib

    module = importlib.import_module(f"sisa.{package}")
    assert (module.__doc__ or "").strip(), f"sisa/{package}/__init__.py has no docstring saying what it owns"
    exported = getattr(module, "__all__", None)
    assert exported, f"sisa/{package}/__init__.py exports nothing (__all__)"
    missing = [name for name in exported if not hasattr(module, name)]  # a lazy export loads here
    assert not missing, f"sisa.{package}.__all__ names what it does not define: {missing}"


def test_ruff_finds_nothing_and_the_tree_is_formatted() -> None:
    """`make lint`'s checks, with the line length of pyproject.toml (120), on every Python file."""
    import subprocess

    ruff = Path(sys.executable).with_name("ruff")
    folders = ["sisa", "pipelines", "storage", "tests", "benchmarks", "tools", "docs/hooks", "docs/tour", "docs/demo"]
    check = subprocess.run([ruff, "check", "--quiet", *folders], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-3000:]
    fmt = subprocess.run([ruff, "format", "--check", "--quiet", *folders], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, f"run `ruff format`: {fmt.stdout[-2000:]}"


def test_no_function_in_sisa_or_pipelines_is_over_80_lines() -> None:
    """A function that long has steps with names of their own; split it."""
    long = []
    for path in sorted([*(ROOT / "sisa").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]):
        for f in ast.walk(ast.parse(path.read_text())):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 80:
                long.append(f"{path.relative_to(ROOT)}::{f.name} ({f.end_lineno - f.lineno + 1} lines)")
    assert not long, long
