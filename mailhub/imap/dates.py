"""Month names and years as IMAP and RFC 5322 write them, shared by the argument grammar
(APPEND's date-time, SEARCH's dates), SEARCH's SENT* keys and SORT's DATE."""

from __future__ import annotations

_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MONTHS: dict[str, int] = {name: i for i, name in enumerate(_NAMES, 1)}  # upper case
MONTHS_B: dict[bytes, int] = {name.encode(): i for name, i in MONTHS.items()}


def full_year(digits: bytes | str) -> int:
    """A Date: header's year; RFC 5322 4.3 (obsolete syntax): two digits are 2000-2049 below 50
    and 1950-1999 from 50, three digits are added to 1900."""
    year = int(digits)
    if len(digits) == 2:
        return year + (2000 if year < 50 else 1900)
    if len(digits) == 3:
        return year + 1900
    return year
