"""Small value rules shared by the aggregates (pure, no I/O)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from crm.aggregates.errors import InvalidValueError

TIERS = ("A", "B", "C", "D")
MONEY_PLACES = Decimal("0.0001")
MAX_MONEY_DIGITS = 14  # integer digits: 18 significant digits with 4 decimal places
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")  # fullmatch: `$` would let a trailing newline in


def require_text(field: str, value: str | None, *, max_len: int = 200, min_len: int = 1) -> str:
    """A trimmed string of min_len..max_len characters, or InvalidValueError."""
    text = (value or "").strip()
    if not (min_len <= len(text) <= max_len):
        raise InvalidValueError(f"{field} must be {min_len}-{max_len} characters")
    return text


def optional_text(field: str, value: str | None, *, max_len: int = 200) -> str | None:
    """None stays None; otherwise as require_text (an empty string becomes None)."""
    if value is None or not value.strip():
        return None
    return require_text(field, value, max_len=max_len)


def require_email(value: str | None) -> str | None:
    """A plausible e-mail address (the API validates strictly; this guards the domain)."""
    if value is None:
        return None
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise InvalidValueError("email is not a valid address")
    return value


def require_tier(value: str) -> str:
    if value not in TIERS:
        raise InvalidValueError(f"tier must be one of {', '.join(TIERS)}")
    return value


def require_money(field: str, value: Decimal, *, positive: bool = False) -> Decimal:
    """A non-negative (or positive) finite Decimal with at most four decimal places."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidValueError(f"{field} must be a finite decimal")
    if value < 0 or (positive and value == 0):
        raise InvalidValueError(f"{field} must be {'> 0' if positive else '>= 0'}")
    if value.adjusted() >= MAX_MONEY_DIGITS:
        raise InvalidValueError(f"{field} is too large")
    if value != value.quantize(MONEY_PLACES):
        raise InvalidValueError(f"{field} has more than 4 decimal places")
    return value


def require_utc(field: str, value: datetime) -> datetime:
    if value.tzinfo is None:
        raise InvalidValueError(f"{field} must carry a UTC offset")
    return value
