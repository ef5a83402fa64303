"""The suppression list's CSV: what a spreadsheet would run as a formula is exported inert and read
back as it was (a bounce's detail is text from a remote server)."""

from __future__ import annotations

import datetime as dt

import pytest

from policies.spec import SuppressionEntry
from relay.services.suppressions import csv_lines, read_csv

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("detail", ['=HYPERLINK("http://evil.example","x")', "+1+2", "-2+3", "@SUM(A1)",
                                    "\t=1", "'=already quoted"])
def test_a_formula_is_exported_inert_and_imported_as_it_was(detail):
    text = "".join(csv_lines([SuppressionEntry("a@dest.org", "hard_bounce", detail, None, NOW)]))
    cell = text.splitlines()[1].split(",", 3)[3]
    assert not cell.lstrip('"').startswith(("=", "+", "-", "@", "\t"))
    [back] = read_csv(text, "manual", NOW)
    assert back.detail == detail


def test_plain_details_are_untouched():
    text = "".join(csv_lines([SuppressionEntry("a@dest.org", "manual", "550 5.1.1 no such user", None, NOW)]))
    assert "550 5.1.1 no such user" in text and "'" not in text
