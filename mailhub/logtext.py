"""twistd's log file lines, cheaper: the same text as ``formatEventAsClassicLogText``.

twistd writes every event as ``<time> [<system>] <text>`` through Twisted's
``textFileLogObserver``, which per event formats the time anew (a time-zone lookup, a datetime,
``strftime``) and the text through ``string.Formatter``. A mail server logs a line per message
(``mailhub.smtp.transaction.log_message``), and there that was ~20 us of the reactor's ~450 us
per connection-per-message delivery (benchmarks/README.md, "One connection per message").

``ClassicLogText`` makes the same line: the time text is kept for the second it names (the zone
offset can only change between seconds), an event whose format is ``{log_text}`` (text already
made by the caller) or has no fields is not run through ``string.Formatter``, and every other
event goes to Twisted's own formatter unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FileLogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)

# A timestamp this close below the next second may be rounded up to it by datetime (which keeps
# microseconds): such a time is formatted anew, never taken from the cache.
_EDGE = 0.9999995


class ClassicLogText:
    """``formatEventAsClassicLogText(event, formatTime=...)`` with ``time_format`` (twistd's
    default: RFC 3339 to the second), for ``FileLogObserver``; the same text, cheaper."""

    def __init__(self, time_format: str = timeFormatRFC3339) -> None:
        self._time_format = time_format
        self._second: int | None = None
        self._stamp = ""

    def time_text(self, when: float | None) -> str:
        """``formatTime(when, time_format)``, kept for the rest of ``when``'s second."""
        if when is None:
            return formatTime(None, self._time_format)
        second = int(when)
        if second == self._second and 0 <= when - second < _EDGE:
            return self._stamp
        stamp = formatTime(when, self._time_format)
        if 0 <= when - second < _EDGE and "%f" not in self._time_format:
            self._second, self._stamp = second, stamp
        return stamp

    def __call__(self, event: LogEvent) -> str | None:
        text = _plain_text(event)
        if text is None:  # fields to fill, a traceback, or something unusual: Twisted's way
            return formatEventAsClassicLogText(event, formatTime=self.time_text)
        if not text:
            return None  # as Twisted: an event that formats to nothing is not written
        line = f"{self.time_text(event.get('log_time'))} [{_system(event)}] {text}"
        if "\n" in line:
            line = line.replace("\n", "\n\t")  # continuation lines, as Twisted writes them
        return line + "\n"


def _plain_text(event: LogEvent) -> str | None:
    """The event's text when no formatting is needed, else None."""
    if "log_failure" in event or "log_flattened" in event:
        return None
    fmt = event.get("log_format")
    if fmt == "{log_text}":
        text = event.get("log_text")
        return text if type(text) is str else None
    if type(fmt) is str and "{" not in fmt and "}" not in fmt:
        return fmt
    return None


def _system(event: LogEvent) -> str:
    """The ``[system]`` part, as twisted.logger's ``_formatSystem``."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        level_name = "-" if level is None else level.name
        return f"{event.get('log_namespace', '-')}#{level_name}"
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


def faster(observer: Any) -> Any:
    """``observer`` writing with ``ClassicLogText`` if it is a text ``FileLogObserver``
    (twistd's), else unchanged."""
    if isinstance(observer, FileLogObserver):
        observer.formatEvent = ClassicLogText()
    return observer
