"""What every job shares: config files, one-line errors that name the option, the data folder."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any


class JobError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def read_config_file(path: str | None) -> dict[str, Any]:
    """Options from a TOML or JSON file (flags given on the command line override them)."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise JobError(f"--config: {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise JobError(f"--config: {p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise JobError(f"--config: {p} must hold a table of options")
    return data


def as_flag(message: str) -> str:
    """'seq_len: must be ...' -> '--seq-len: must be ...' so errors name the flag to change."""
    match = re.match(r"^([a-z_]+)(/[a-z_]+)?:", message)
    if not match:
        return message
    names = "/".join("--" + n.replace("_", "-") for n in match.group(0)[:-1].split("/"))
    return names + message[match.end() - 1 :]


def fail(message: str) -> int:
    print(f"error: {as_flag(message)}", file=sys.stderr)
    return 2


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="data folder (default: $PSILONET_DATA or ./data)")
