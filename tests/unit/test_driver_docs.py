"""Each registered driver has a page in docs/drivers/ that cannot drift from its code: its
options table lists exactly the fields of the driver's Options dataclass, with the defaults
the code has, and its sample config loads through gateway.config."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.options import DRIVERS, DriverSpec
from gateway.config import Settings, load
from gateway.confschema import key_of

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "drivers"
MAPS = ROOT / "drivers" / "maps"

# An options table row: | `key` | type | default | meaning |
OPTION_ROW = re.compile(r"^\| `([a-z0-9_]+)` \| ([^|]+) \| ([^|]+) \| (.+) \|$", re.MULTILINE)
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HEADER = """
[gateway]
site = "S1"
id = "gw-1"
state_dir = "state"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"""


def page(name: str) -> str:
    return (DOCS / f"{name}.md").read_text(encoding="utf-8")


def options_table(name: str) -> dict[str, tuple[str, str, str]]:
    """key -> (type, default, meaning), as the page's Options table has them."""
    rows = OPTION_ROW.findall(page(name))
    return {key: (kind.strip(), default.strip(), meaning) for key, kind, default, meaning in rows}


def documented_default(f: dataclasses.Field[Any]) -> str:
    """How a page writes a field's default: `required`, `unset`, or the TOML value in `...`."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return f"`{list(value)}`"
    return f"`{value}`"


DRIVER_NAMES = sorted(DRIVERS)


def test_every_registered_driver_has_a_page_linked_from_the_index_and_the_readme() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in DRIVER_NAMES:
        assert (DOCS / f"{name}.md").is_file(), f"docs/drivers/{name}.md is missing"
        assert f"]({name}.md)" in index, f"docs/drivers/README.md does not link {name}.md"
        assert f"(docs/drivers/{name}.md)" in readme, f"README.md does not link {name}.md"


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_the_options_table_lists_every_option_with_its_default(name: str) -> None:
    spec = DRIVERS[name]
    table = options_table(name)
    fields = {key_of(f): f for f in dataclasses.fields(spec.options)}
    assert sorted(table) == sorted(fields), f"docs/drivers/{name}.md: options table vs code"
    for key, f in fields.items():
        _kind, default, meaning = table[key]
        assert default == documented_default(f), f"docs/drivers/{name}.md: default of {key}"
        assert meaning.strip(), f"docs/drivers/{name}.md: {key} has no meaning"


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_every_renamed_option_is_named_on_its_page(name: str) -> None:
    text = page(name) + (DOCS / "README.md").read_text(encoding="utf-8")
    for old, new in DRIVERS[name].renamed.items():
        assert f"`{old}`" in text and f"`{new}`" in text, (name, old, new)


def locations_named(spec: DriverSpec, sample: dict[str, Any]) -> set[str]:
    """The locations a sample's devices refer to (antennas and location options)."""
    names: set[str] = set()
    refs = {key_of(f) for f in dataclasses.fields(spec.options) if f.metadata.get("location_ref")}
    for entry in sample.get("readers", []) + sample.get("equipment", []):
        names |= {a["location"] for a in entry.get("antennas", {}).values()}
        for key in refs & set(entry):
            value = entry[key]
            values = value.values() if isinstance(value, dict) else value
            names |= {value} if isinstance(value, str) else set(values)
    return names


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_the_sample_config_loads(name: str, tmp_path: Path) -> None:
    """The page's one TOML block, under a minimal [gateway] and [mqtt] and with the locations
    it names, is a valid config for this driver (relative paths as the page says)."""
    (block,) = TOML_BLOCK.findall(page(name))
    spec = DRIVERS[name]
    sample = tomllib.loads(block)
    locations = "".join(f"\n[locations.{loc}]\n" for loc in sorted(locations_named(spec, sample)))
    shutil.copytree(MAPS, tmp_path / "maps")  # the modbus page's map = "maps/robot.toml"
    config = tmp_path / "site.toml"
    config.write_text(HEADER + locations + "\n" + block, encoding="utf-8")
    settings: Settings = load(config)
    (device,) = settings.devices
    assert device.driver == name
    assert isinstance(device.options, spec.options)
