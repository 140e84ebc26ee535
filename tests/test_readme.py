"""The README documents every setting and opens with the two commands."""

from __future__ import annotations

from monitor.config import Settings

from .helpers import ROOT


def test_every_setting_is_documented():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in Settings.describe() if f"`{name}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh", 1)[1].split("```", 1)[0]
    assert "python -m monitor demo" in first_block
    assert "bash scripts/test" in first_block
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
