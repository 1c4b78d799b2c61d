"""The scale test's figures, printed in a "scale figures" section at the end of the run (whatever -q/-s say)."""

from __future__ import annotations

from typing import Any

FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("scale figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
