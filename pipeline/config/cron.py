"""Validation of standard 5-field cron expressions (the `schedule.cron` params key), without importing Prefect:
params are loaded at every stage's start, and Prefect's cron parser costs over a second to import there."""

from __future__ import annotations

# (field, lowest, highest, names from `lowest` on) of a standard 5-field cron expression
CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def _cron_item_valid(item: str, lowest: int, highest: int, names: tuple[str, ...]) -> bool:
    """Whether one comma-separated item of a cron field is `*`, `N` or `N-M`, each optionally `/STEP`."""
    span, slash, step = item.partition("/")
    if slash and not (step.isdigit() and int(step) > 0):
        return False
    if span == "*":
        return True
    ends = span.lower().split("-")
    values = [int(end) if end.isdigit() else lowest + names.index(end) if end in names else None for end in ends]
    return (len(values) <= 2 and all(v is not None and lowest <= v <= highest for v in values)
            and values == sorted(values))


def check_cron(expression: str) -> None:
    """Raise ValueError, naming the `cron` key and the offending field, unless `expression` is a standard 5-field
    cron expression (minute hour day-of-month month day-of-week; `*`, `N`, `N-M`, `/STEP`, lists, month and
    weekday names)."""
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(f"cron: {expression!r} has {len(fields)} fields, not 5 (minute hour day-of-month month "
                         "day-of-week), e.g. '0 3 * * *'")
    for text, (name, lowest, highest, names) in zip(fields, CRON_FIELDS):
        if not all(_cron_item_valid(item, lowest, highest, names) for item in text.split(",")):
            allowed = f"{lowest}-{highest}" + (f" or {names[0]}-{names[-1]}" if names else "")
            raise ValueError(f"cron: {expression!r}: the {name} field {text!r} is not a list of *, N or N-M "
                             f"(N <= M), each optionally /STEP, with N, M in {allowed}")
