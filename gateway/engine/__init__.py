"""The movement engine (pure): see core.py. Public names re-exported here, the engine itself
lazily: the config loader needs gateway.engine.settings (and `fc-edge check-config` runs no
engine), so importing this package must not load the core and its compiled loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.engine.config import EngineConfig

if TYPE_CHECKING:
    from gateway.engine.core import Engine, Step

__all__ = ["Engine", "EngineConfig", "Step"]


def __getattr__(name: str) -> Any:
    if name in ("Engine", "Step"):
        from gateway.engine import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
