"""The bounds every request value is held to (issue #9), declared once and reused.

Commands use these directly; the API re-exports them (crm.api.schemas) for its own request
models and query parameters. A value outside its bound is a 422 naming the field, before any
handler runs, so nothing is recorded.

- Text: every string has a maximum length (names 200, notes 4,000, descriptions 10,000) and no
  control characters but tab, line feed and carriage return. NUL in particular: PostgreSQL text
  cannot hold it, so a name with U+0000 would be stored in the event store and then stop the
  read model's projection for good (a poison event).
- Money: a Decimal below 10^12 with at most 4 decimal places, never NaN or Infinity. A trillion
  per unit price, cost or payment is far above any real order line, and it keeps derived sums
  exact: a line (quantity <= 10^6) stays below 10^18 and an order (<= 500 lines) below
  5 x 10^20, i.e. at most 25 significant digits with 4 places, inside the 28 digits of Python's
  default Decimal context, so totals, profit and margin never round silently. The price itself
  also fits a signed 64-bit count of ten-thousandths (10^16 < 9.2 x 10^18) for consumers that
  keep money as integers.
- Dates: calendar days 1900-01-01 .. 2100-12-31 (special days from 1800: founding days); instants (with a UTC offset) in the same span.
  Outside it the date arithmetic of the domain (UTC conversion, `+ 1 day`, SLA deadlines) can
  leave Python's datetime range (years 1..9999) and fail; nothing in a CRM needs it.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(2100, 12, 31)
FIRST_ANNIVERSARY = date(1800, 1, 1)
FIRST_INSTANT = datetime(1900, 1, 1, tzinfo=timezone.utc)
LAST_INSTANT = datetime(2100, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
MAX_MONEY = Decimal("999999999999.9999")  # < 10^12, 4 places (see above)
MONEY_DIGITS, MONEY_PLACES = 16, 4

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(value: str | None) -> str | None:
    """No control characters but tab, line feed and carriage return (None passes)."""
    if value is not None and _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


Printable = AfterValidator(printable)


def _text(max_length: int, min_length: int = 0) -> StringConstraints:
    return StringConstraints(min_length=min_length, max_length=max_length)


# Bounded, printable strings (stripped first by Command's str_strip_whitespace)
Name = Annotated[str, _text(200, 1), Printable]  # names, actors, who did it
ShortText = Annotated[str, _text(200), Printable]  # optional short fields (owner, supplier)
Phone = Annotated[str, _text(40), Printable]
Area = Annotated[str, _text(100), Printable]  # optional: industry, region
Channel = Annotated[str, _text(50), Printable]
Label = Annotated[str, _text(100, 1), Printable]  # categories, labels
Reason = Annotated[str, _text(500, 1), Printable]  # a required reason
OptionalReason = Annotated[str, _text(500), Printable]
Comment = Annotated[str, _text(2_000), Printable]
RequiredComment = Annotated[str, _text(2_000, 1), Printable]
Note = Annotated[str, _text(4_000), Printable]
LongText = Annotated[str, _text(10_000, 1), Printable]  # descriptions, resolutions

# Numbers
Money = Annotated[Decimal, Field(ge=0, max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES, allow_inf_nan=False,
                                 description="a decimal string, 0 .. 999999999999.9999 (at most 4 places)")]
PositiveMoney = Annotated[Decimal, Field(gt=0, max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES,
                                         allow_inf_nan=False,
                                         description="a decimal string, > 0 .. 999999999999.9999 (at most 4 places)")]
Quantity = Annotated[int, Field(gt=0, le=1_000_000, strict=True)]

# Time
SaneDate = Annotated[date, Field(ge=FIRST_DAY, le=LAST_DAY, description="a date, 1900-01-01 .. 2100-12-31")]
# A day remembered every year (a firm's founding day may well be older than 1900; only month and day are used)
AnniversaryDate = Annotated[date, Field(ge=FIRST_ANNIVERSARY, le=LAST_DAY, description="a date, 1800-01-01 .. 2100-12-31")]
SaneInstant = Annotated[AwareDatetime, Field(ge=FIRST_INSTANT, le=LAST_INSTANT,
                                             description="an instant with a UTC offset, 1900 .. 2100")]
