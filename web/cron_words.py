"""A cron expression in plain words, for the Schedules page.

Only wording: when a job fires is computed by the scheduler (`next_fires`).
Five fields (minute hour day-of-month month day-of-week), or six with the
seconds field first, as docs/cron.md describes cron. Anything this cannot word
(names like `@daily` aside) is shown as the expression itself.
"""

from __future__ import annotations

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]  # fmt: skip
_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}  # fmt: skip


def describe(expr: str) -> str:
    text = _ALIASES.get(expr.strip().lower(), expr)
    fields = text.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        return expr
    try:
        return _words(*fields)
    except ValueError:
        return expr


def _words(sec: str, minute: str, hour: str, dom: str, month: str, dow: str) -> str:
    when = _time(sec, minute, hour)
    days = []
    if dom != "*":
        days.append("on day " + _list(dom, str) + " of the month")
    if dow != "*":
        days.append("on " + _list(dow, lambda v: _DAYS[int(v) % 8] if v.isdigit() else v.capitalize()))
    if month != "*":
        days.append("in " + _list(month, lambda v: _MONTHS[int(v) - 1] if v.isdigit() else v.capitalize()))
    return " ".join([when, *days]).strip()


def _time(sec: str, minute: str, hour: str) -> str:
    if _fixed(sec) and _fixed(minute) and _fixed(hour):
        s = f":{int(sec):02d}" if int(sec) else ""
        return f"at {int(hour):02d}:{int(minute):02d}{s}"
    if _fixed(sec) and _fixed(minute) and hour == "*":
        s = f":{int(sec):02d}" if int(sec) else ""
        return f"every hour at minute {int(minute)}{s}" if int(minute) or s else "every hour"
    if _fixed(sec) and int(sec) == 0 and minute.startswith("*/") and hour == "*":
        return f"every {_n(minute[2:], 'minute')}"
    if _fixed(sec) and int(sec) == 0 and minute == "*" and hour == "*":
        return "every minute"
    if sec == "*" and minute == "*" and hour == "*":
        return "every second"
    if sec.startswith("*/") and minute == "*" and hour == "*":
        return f"every {_n(sec[2:], 'second')}"
    if _fixed(sec) and int(sec) == 0 and _fixed(minute) and hour.startswith("*/"):
        return f"every {_n(hour[2:], 'hour')} at minute {int(minute)}"
    parts = []
    if sec not in ("0", "*"):
        parts.append(f"at second {_list(sec, str)}")
    if minute != "*":
        parts.append(f"at minute {_list(minute, str)}")
    elif sec == "0":
        parts.append("every minute")
    if hour != "*":
        parts.append(f"past hour {_list(hour, str)}")
    return ", ".join(parts) or "every second"


def _fixed(field: str) -> bool:
    return field.isdigit()


def _n(count: str, unit: str) -> str:
    if not count.isdigit():
        raise ValueError(count)
    return unit if int(count) == 1 else f"{int(count)} {unit}s"


def _list(field: str, name: object) -> str:
    fn = name if callable(name) else str
    out = []
    for part in field.split(","):
        if part.startswith("*/"):
            out.append(f"every {part[2:]}")
        elif "-" in part:
            a, _, b = part.partition("-")
            step = ""
            if "/" in b:
                b, _, step = b.partition("/")
                step = f" every {step}"
            out.append(f"{fn(a)} through {fn(b)}{step}")
        else:
            out.append(str(fn(part)))
    return out[0] if len(out) == 1 else ", ".join(out[:-1]) + " and " + out[-1]
