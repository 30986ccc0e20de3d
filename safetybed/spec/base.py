"""Shared pydantic base for every spec model: unknown keys are errors, values are checked strictly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen model that rejects unknown keys (a mistyped key must never be ignored silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)
