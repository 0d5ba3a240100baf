"""qrun's progress lines (qproxy/client/progress.py): one per change in a log, one line
rewritten in place on a terminal. The real polling of a real job through a real proxy is
tests/proxy/test_qrun.py."""

from __future__ import annotations

import io

from qproxy.client.progress import Progress


def test_log_mode_prints_each_change_once() -> None:
    out = io.StringIO()
    p = Progress(out, live=False)
    for state, detail in [("submitted", "job j1"), ("queued", "position 2 in the device's "
                          "queue"), ("queued", "position 2 in the device's queue"),
                          ("queued", "position 1 in the device's queue"), ("running", ""),
                          ("running", ""), ("done", "")]:
        p.show(state, detail)
    words = [line.split(",")[0] for line in out.getvalue().splitlines()]
    assert words == ["qrun: submitted (job j1)",
                     "qrun: queued (position 2 in the device's queue)",
                     "qrun: queued (position 1 in the device's queue)",
                     "qrun: running", "qrun: done"]
    assert all(line.endswith(" s") for line in out.getvalue().splitlines())
    assert "\r" not in out.getvalue()


def test_terminal_mode_rewrites_one_line() -> None:
    out = io.StringIO()
    p = Progress(out, live=True)
    for state in ("submitted", "queued", "queued", "failed"):
        p.show(state)
    text = out.getvalue()
    assert text.count("\r\033[K") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "qrun: queued, " in text and "qrun: failed, " in text
