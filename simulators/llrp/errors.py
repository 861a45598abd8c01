"""Errors the LLRP simulator raises to its callers (a leaf module: the server and its control
API both use it)."""


class FaultError(ValueError):
    """An unknown fault, or bad arguments for one."""
