"""The one formatter of pydantic errors (shared/edge_shared/validation.py): each phrasing, each kind."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_shared.validation import describe, summary


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    mode: Literal["on", "off"] = "on"


def errors(data: dict[str, object]) -> list[dict[str, object]]:
    with pytest.raises(ValidationError) as info:
        Doc.model_validate(data)
    return [dict(e) for e in info.value.errors()]


def test_each_kind_in_both_phrasings() -> None:
    (bad,) = errors({"version": 0})
    assert describe(bad) == "got 0; should be greater than or equal to 1"
    assert describe(bad, style="expected") == "got 0; expected greater than or equal to 1"
    assert describe(bad, show_input=False) == "should be greater than or equal to 1"
    (literal,) = errors({"version": 1, "mode": "maybe"})
    assert describe(literal, style="expected") == "got 'maybe'; expected one of on, off"
    (extra,) = errors({"version": 1, "colour": 1})
    assert describe(extra) == "unknown field" and describe(extra, noun="key") == "unknown key"
    (missing,) = errors({})
    assert describe(missing) == "required field is missing"


def test_summary_lists_the_first_problems_and_counts_the_rest() -> None:
    with pytest.raises(ValidationError) as info:
        Doc.model_validate({"version": "x", "mode": "maybe", "a": 1, "b": 2})
    assert summary(info.value) == (
        "version: should be a valid integer, unable to parse string as an integer; "
        "mode: should be 'on' or 'off'; a: unknown field; and 1 more"
    )
