# Types of the compiled hot loop (gateway/engine/_hotloop.c).
from typing import Any

def setup(
    none: int, never: int, no_evidence: int, rounds: float, iv_weight: float, outread: int, /
) -> None: ...
def judge(engine: Any, reads: list[Any], step: Any, /) -> tuple[int, int, int, int]: ...
