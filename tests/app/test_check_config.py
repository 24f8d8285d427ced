"""``raytide check-config`` runs none of the file's code: a plugin is imported only with --load-plugins; it
shows no password and no control character from the file, and prints the configuration's warnings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscaler.app.cli import EXIT_CONFIG, app

MODULE = "raytide_side_effect_probe"

PLUGIN = """
from pathlib import Path

Path(__file__).with_name("imported").write_text("the module ran")


class Policy:
    name = "probe"

    def __init__(self, **options):
        self.options = options

    def decide(self, ctx):
        raise NotImplementedError
"""

SHAPES = "shapes:\n  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2}\n"


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module that leaves a file behind when imported, installed as another distribution's policy
    ``side-effect`` (its dist-info on sys.path, as pip would leave it)."""
    (tmp_path / f"{MODULE}.py").write_text(PLUGIN, encoding="utf-8")
    info = tmp_path / "raytide_side_effect_probe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: raytide-side-effect-probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[raytide.policies]\nside-effect = {MODULE}:Policy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return tmp_path


def check(config: Path, *flags: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["check-config", str(config), *flags], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def config_with(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "raytide.yaml"
    p.write_text(SHAPES + text, encoding="utf-8")
    return p


@pytest.mark.parametrize("ref", [f"{MODULE}:Policy", "side-effect"], ids=["module:attr", "installed plugin"])
def test_a_plugin_is_not_imported_without_load_plugins(plugin_dir: Path, ref: str) -> None:
    config = config_with(plugin_dir, f"policy: {{name: {ref}, options: {{x: 1}}}}\n")
    code, out, errout = check(config)
    assert code == 0, errout
    assert "OK" in out
    assert "pass --load-plugins to import it" in errout
    assert not (plugin_dir / "imported").exists()
    assert MODULE not in sys.modules


@pytest.mark.parametrize("ref", [f"{MODULE}:Policy", "side-effect"], ids=["module:attr", "installed plugin"])
def test_load_plugins_imports_and_builds_it(plugin_dir: Path, ref: str) -> None:
    config = config_with(plugin_dir, f"policy: {{name: {ref}, options: {{x: 1}}}}\n")
    code, out, errout = check(config, "--load-plugins")
    assert code == 0, errout
    assert "OK" in out and "--load-plugins" not in errout
    assert (plugin_dir / "imported").exists()


def test_a_malformed_reference_is_still_refused_without_importing(tmp_path: Path) -> None:
    code, _, errout = check(config_with(tmp_path, "policy: {name: 'no such thing'}\n"))
    assert code == EXIT_CONFIG
    assert "neither an installed policy" in errout


def test_builtin_policy_options_are_still_checked(tmp_path: Path) -> None:
    code, _, errout = check(
        config_with(tmp_path, "policy: {name: throughput, options: {no_such_option: 1}}\n")
    )
    assert code == EXIT_CONFIG
    assert "bad options" in errout


def test_help_says_plugins_are_not_imported() -> None:
    result = CliRunner().invoke(app, ["check-config", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--load-plugins" in result.stdout and "runs none of the file's code" in result.stdout


def test_a_password_and_control_characters_in_the_file_are_not_shown(tmp_path: Path) -> None:
    config = config_with(tmp_path, 'policy: {name: "http://raytide:hunter2-secret@h/\\e[2J\\x9b[/]"}\n')
    code, out, errout = check(config)
    assert code == EXIT_CONFIG
    assert "policy reference 'http://***@h/" in errout
    assert "hunter2-secret" not in out + errout and "\x1b" not in out + errout and "\x9b" not in out + errout


def test_the_configuration_warnings_are_printed(tmp_path: Path) -> None:
    code, out, errout = check(config_with(tmp_path, "daemon: {http_host: 0.0.0.0}\n"))
    assert code == 0, errout
    assert "OK" in out
    assert "warning: daemon.http_host '0.0.0.0' is not a loopback address" in errout
