"""Shared fixtures. Tests never time things and never use global RNGs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(capsys):
    """Run ``safetybed ARGS`` in-process; returns (exit_code, stdout, stderr)."""
    from safetybed.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture
def one_torch_thread():
    """Pin torch to one thread for the test (small networks on this 2-core box are 10-70x slower with more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _suite_demos_on_one_torch_thread(request):
    """The suite's demos run on one torch thread under ``safetybed suite run`` (registry.run_demo); their tests call
    the demos directly, so pin it here too (small networks on a busy 2-core box are many times slower otherwise)."""
    if not request.module.__name__.rsplit(".", 1)[-1].startswith("test_suite_"):
        yield
        return
    from safetybed.threads import torch_threads

    with torch_threads(1):
        yield


def assert_validate_rejects(cli, tmp_path: Path, case: str, text: str, field: str, reason: str) -> None:
    """``safetybed scenarios validate`` on a malformed spec exits 2 with one message naming file, field, reason."""
    path = tmp_path / f"{case}.toml"
    path.write_text(text, encoding="utf-8")
    code, _, stderr = cli("scenarios", "validate", str(path))
    assert code == 2, stderr
    message = " ".join(stderr.split())
    assert path.name in message
    if field:
        assert f": {field}:" in message
    assert reason.lower() in message.lower()
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.strip()]) <= 3  # one message (may wrap)
