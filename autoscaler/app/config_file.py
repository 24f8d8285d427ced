"""Read a configuration file from disk into a validated ``Config``."""

from __future__ import annotations

import os
from pathlib import Path

from autoscaler.core.config import Config, ConfigError, ConfigProblem, DaemonConfig, parse_config


def load_config(path: Path | str) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [ConfigProblem("(file)", None, f"cannot read: {e.strerror or e}")]) from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            str(p),
            [
                ConfigProblem(
                    "(file)", None, f"is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
                )
            ],
        ) from None
    return parse_config(text, str(p))


def state_path(daemon: DaemonConfig) -> Path:
    """Where the SQLite state lives: ``daemon.state_path``, else ``$XDG_STATE_HOME/raytide/state.db``."""
    if daemon.state_path is not None:
        return daemon.state_path.expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "raytide" / "state.db"
