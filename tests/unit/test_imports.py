"""Import hygiene: what `fc-edge check-config` loads, and no import cycles in the product.

`check-config` runs on an operator's laptop and in CI for a config that names LLRP readers and
Modbus PLCs; it must validate them without their vendor libraries (sllurp, pymodbus), the
demo's terminal UI (rich) or the compiled engine: the config loader knows drivers through
drivers/options.py only.

The cycle check reads every import statement of gateway/, drivers/ and simulators/ with `ast`
— at module level, inside functions, and under `if TYPE_CHECKING:` alike: an import deferred
into a function is still a dependency (deferring it only hides the cycle from the
interpreter), and the review found exactly such cycles (config <-> drivers/base, the benches,
the LLRP simulator's server <-> control).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "drivers", "simulators")

# --- what check-config imports ----------------------------------------------------------------

CONVEYOR_MAP = """
[points.state]
address = 0
kind = "input"
type = "uint16"
role = "state"
enum = { 0 = "Idle", 1 = "Running" }

[points.heartbeat]
address = 0
kind = "discrete"
type = "bool"

[heartbeat]
point = "heartbeat"
"""


def site_config(tmp_path: Path) -> Path:
    """An LLRP portal reader, a TSL handheld and a Modbus PLC: every vendor library's driver."""
    (tmp_path / "conveyor.toml").write_text(CONVEYOR_MAP)
    path = tmp_path / "site.toml"
    path.write_text(
        f"""
[gateway]
site = "S1"
id = "gw-1"
state_dir = "{tmp_path / "state"}"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[locations.YARD]
offsite = true
[locations.DOCK-01]
barcode = "LOC-DOCK-01"

[portals.dock-01]
outside = ["dock-01:1"]
inside = ["dock-01:2"]

[[readers]]
name = "dock-01"
driver = "llrp"
host = "192.0.2.10"

[readers.antennas]
1 = {{ location = "YARD" }}
2 = {{ location = "DOCK-01" }}

[[readers]]
name = "hh-1"
driver = "tsl"
port = "/dev/rfcomm0"

[[equipment]]
name = "conveyor-1"
driver = "modbus"
host = "192.0.2.20"
map = "conveyor.toml"
"""
    )
    return path


def modules_imported_by_check_config(config: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gateway.cli", "check-config", "-c", config],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout
    # stderr: "import time: self [us] | cumulative | imported package", one line per module
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def top_level(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in names}


def test_check_config_imports_no_vendor_library_nor_the_demo_ui(tmp_path: Path) -> None:
    imported = modules_imported_by_check_config(site_config(tmp_path))
    assert "gateway.config" in imported  # the measurement saw the loader itself
    assert top_level(imported, ("sllurp", "pymodbus", "serial", "rich")) == set()
    assert {"drivers.llrp", "drivers.modbus", "drivers.tsl", "drivers.base"} & imported == set()


def test_check_config_does_not_load_the_compiled_engine(tmp_path: Path) -> None:
    imported = modules_imported_by_check_config(site_config(tmp_path))
    assert "gateway.engine._hotloop" not in imported
    assert "gateway.engine.core" not in imported


# --- import cycles ------------------------------------------------------------------------------


def module_files() -> dict[str, Path]:
    """Module name -> source file, for every module of the product packages; compiled
    extension modules (gateway.engine._hotloop) are named too, so that `from pkg import ext`
    is an import of the extension, not of the package."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix not in (".py", ".so", ".pyd") or "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).parts)
            parts[-1] = parts[-1].split(".")[0]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The product modules an import statement anywhere in the module names: `import a.b` ->
    a.b; `from a import b` -> a.b if that is a module, else a (relative imports resolved)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                out.add(submodule if submodule in known else target)
    return {name for name in out if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports directly (the module named, not its parent
    packages: `import a.b.c` is an edge to a.b.c only)."""
    files = module_files()
    known = set(files)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        if path.suffix == ".py":
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            graph[name] = imports_of(tree, name, path.name == "__init__.py", known)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_deferred_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "gateway.publisher" in graph["gateway.delivery"]  # module level
    assert "gateway.handheld" in graph["gateway.ingest"]  # inside make_workflows
    assert "gateway.config" in graph["gateway.handheld"]  # under TYPE_CHECKING
    assert "gateway.engine._hotloop" in graph["gateway.engine.core"]  # a compiled module


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


def test_the_daemon_does_not_reach_the_dev_packages() -> None:
    # `fc-edge run` holds only the daemon: benchmarks, the demo and the dev kit they share
    # (brokers, child processes, the TOML writer) are never a dependency of it.
    dev = ("gateway.bench", "gateway.demo", "gateway.devkit")
    daemon = reachable(import_graph(), "gateway.daemon")
    assert "gateway.ingest" in daemon  # the walk saw the daemon's own modules
    assert {m for m in daemon if m.startswith(dev)} == set()


def test_each_driver_class_matches_what_the_config_loader_knows_of_it() -> None:
    from drivers.base import driver_class
    from drivers.options import DRIVERS

    for name, spec in DRIVERS.items():
        cls = driver_class(name)
        assert cls.Options is spec.options, name
        assert cls.kind == spec.kind, name
        assert spec.missing() == [], name
