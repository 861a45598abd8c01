"""Validating EPCIS 2.0 documents against GS1's official JSON Schema (tests/fixtures/epcis/),
with format checks for "uri" and "date-time" written here (see tests/unit/test_epcis.py)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

EPCIS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "epcis"


_URI = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*:"
    r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]]|%[0-9A-Fa-f]{2})*"
    r"(?:#(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*)?"
)
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def _checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("uri")
    def is_uri(value: object) -> bool:  # RFC 3986 absolute URI (with optional fragment)
        return not isinstance(value, str) or bool(_URI.fullmatch(value))

    @checker.checks("date-time", raises=ValueError)
    def is_date_time(value: object) -> bool:  # RFC 3339 date-time
        if not isinstance(value, str):
            return True
        if not _DATE_TIME.fullmatch(value):
            return False
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # ranges: month 13 etc.
        return True

    return checker


def errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def assert_valid(validator: jsonschema.Draft7Validator, doc: Any) -> None:
    problems = errors(validator, doc)
    assert not problems, "\n".join(problems)
