"""Tests and tools stand alone (issue #15): a test module imports shared helpers from
tests/support/ only, never another test module (nor conftest.py); tools/ imports nothing from
tests/; and nothing under tests/ or tools/ reaches for a path outside the repository.

Checked statically: every import statement (also those inside functions) of every Python file
under tests/ and tools/, and the bytes of every file there."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TOOLS = ROOT / "tools"

# Imports still to be removed: (importing file, imported module). The last test below fails
# once an entry is no longer needed, so this list only shrinks. (Empty: keep it so.)
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()

# Built here so this file does not match itself.
OUTSIDE_PATHS = [
    "..".join(["", "/shared"]),  # a sibling checkout next to the repository
    "/".join(["", "work", ""]),  # an absolute path on one machine
]


def python_files(top: Path) -> Iterator[Path]:
    for path in sorted(top.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_repo_module(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_in(
    source: str, package: str, is_module: Callable[[str], bool] = is_repo_module
) -> Iterator[tuple[int, str]]:
    """(line, module) for each module `source` (a module of `package`) imports: for
    `from a.b import c` that is a.b.c when c is a module, else a.b. Relative imports are
    resolved against `package`; imports inside functions count too."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield node.lineno, name if is_module(name) else base


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    yield from imports_in(path.read_text(encoding="utf-8"), package)


def is_tests(module: str) -> bool:
    return module == "tests" or module.startswith("tests.")


def is_test_module(module: str) -> bool:
    return is_tests(module) and module.rsplit(".", 1)[-1].startswith("test_")


def is_support(module: str) -> bool:
    return module == "tests.support" or module.startswith("tests.support.")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def offending_imports(top: Path, bad: Callable[[str], bool]) -> list[str]:
    found = []
    for path in python_files(top):
        for line, module in imported_modules(path):
            if bad(module) and (rel(path), module) not in KNOWN_EXCEPTIONS:
                found.append(f"{rel(path)}:{line}: imports {module}")
    return sorted(set(found))


def test_no_module_imports_a_test_module() -> None:
    found = offending_imports(TESTS, is_test_module) + offending_imports(TOOLS, is_test_module)
    assert not found, "move what is shared into tests/support/:\n" + "\n".join(found)


def test_tests_import_shared_helpers_from_tests_support_only() -> None:
    """Not from conftest.py (fixtures only), not from helper modules beside the tests."""
    found = offending_imports(TESTS, lambda m: is_tests(m) and not is_support(m))
    assert not found, "shared helpers belong in tests/support/:\n" + "\n".join(found)


def test_tools_import_nothing_from_tests() -> None:
    found = offending_imports(TOOLS, is_tests)
    assert not found, (
        "tools/ must run without tests/ (put what both need in tools/):\n" + "\n".join(found)
    )


def test_no_path_outside_the_repository() -> None:
    found = []
    for top in (TESTS, TOOLS):
        for path in sorted(p for p in top.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(TESTS).parts if top == TESTS else ()
            if len(parts) == 3 and parts[0] == "fixtures" and parts[2] == "README.md":
                continue  # provenance: where a fixture was copied from
            data = path.read_bytes()
            for needle in OUTSIDE_PATHS:
                if needle.encode() in data:
                    found.append(f"{rel(path)}: mentions {needle!r}")
    assert not found, "keep what the tests need inside the repository:\n" + "\n".join(found)


def test_the_checks_bite() -> None:
    """The detectors on a made-up module of tests.e2e: a check that cannot fail proves nothing."""
    source = (
        "import tests.helpers\n"
        "from tests.unit import test_engine\n"
        "from .test_spine import ZONE_READER\n"
        "from ..support import spine\n"
        "from tests.support.helpers import wait_for\n"
        "def f():\n"
        "    from tests.conftest import Broker\n"
    )
    modules = {"tests.unit.test_engine", "tests.support.spine"}
    found = [m for _line, m in imports_in(source, "tests.e2e", modules.__contains__)]
    assert found == [
        "tests.helpers",
        "tests.unit.test_engine",
        "tests.e2e.test_spine",
        "tests.support.spine",
        "tests.support.helpers",
        "tests.conftest",
    ]
    assert [m for m in found if is_test_module(m)] == [
        "tests.unit.test_engine",
        "tests.e2e.test_spine",
    ]
    assert [m for m in found if is_tests(m) and not is_support(m)] == [
        "tests.helpers",
        "tests.unit.test_engine",
        "tests.e2e.test_spine",
        "tests.conftest",
    ]
    assert not is_tests("testsuite.test_x") and not is_support("tests.supporting")
    assert is_repo_module("tests.support.helpers") and not is_repo_module("tests.support.nope")


def test_known_exceptions_are_still_needed() -> None:
    """When the engine's tests stop importing each other, drop the entry from the list."""
    present = {
        (rel(path), module)
        for top in (TESTS, TOOLS)
        for path in python_files(top)
        for _line, module in imported_modules(path)
    }
    stale = sorted(KNOWN_EXCEPTIONS - present)
    assert not stale, f"no longer imported; remove from KNOWN_EXCEPTIONS: {stale}"
