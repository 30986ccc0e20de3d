"""Shared pydantic base for every spec model: unknown keys are errors, values are checked strictly."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from safetybed.errors import SpecError


class StrictModel(BaseModel):
    """A frozen model that rejects unknown keys (a mistyped key must never be ignored silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)


def read_toml_file(path: Path) -> dict[str, Any]:
    """Parse one TOML spec file; a missing file, a folder, non-UTF-8 text or bad TOML is a :class:`SpecError`."""
    if not path.exists():
        raise SpecError(path, "", "file not found")
    if not path.is_file():
        raise SpecError(path, "", "expected a TOML file, got a directory")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise SpecError(path, "", f"not UTF-8 text ({error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(path, "", f"invalid TOML: {error}") from None
