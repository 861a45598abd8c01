"""The movement engine (pure): see core.py. Public names re-exported here."""

from gateway.engine.config import EngineConfig
from gateway.engine.core import Engine, Step

__all__ = ["Engine", "EngineConfig", "Step"]
