"""What every job shares: options derived from the configs, config files, the data folder, and
one way to end: a one-line message, never a traceback.

Exit codes: 0 done; 2 bad input (an option, a config key, a file: nothing was started, or the
run was refused before any work); 1 a fault during the work (full disk, diverged training,
a catalog locked for too long: the run is recorded as failed with the reason);
130 interrupted with Ctrl-C (the run is recorded as ``interrupted`` and can be resumed).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import os
import re
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable

from psilonet import config as configs
from psilonet import runtime


class JobError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class JobFault(Exception):
    """The work could not be done (not the input's fault); one line, exit code 1."""


class JobParser(argparse.ArgumentParser):
    """argparse with its errors as one line (``error: --seed: invalid int value: 'x'``), exit 2."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[-1] + ": ", message)
        raise SystemExit(fail(f"{message} (see {self.prog} --help)"))


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
    except OSError as exc:
        raise JobError(f"--config: cannot read {p}: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise JobError(f"--config: {p} must hold a table of options")
    return data


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_options(parser: argparse.ArgumentParser, cls, *, exclude: tuple[str, ...] = (),
                       defaults: bool = True) -> None:
    """One flag per field of the config dataclass ``cls`` (see :func:`psilonet.config.option`).

    Type, choices and help come from the field; ``defaults=False`` leaves unset flags out of
    the parsed namespace (so a config file can fill them).
    """
    hints = configs.hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("flag", True) or flag_name(f.name) in exclude:
            continue
        base, _ = configs._parts(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        kwargs: dict[str, Any] = {"help": f"{meta.get('help') or ''} (default: {shown})".strip()}
        if defaults:
            kwargs["default"] = default
        if base is bool:
            kwargs["action"] = "store_true"
        else:
            item = typing.get_args(base)[0] if typing.get_origin(base) is list else base
            kwargs["type"] = item
            if item is not base:
                kwargs["nargs"] = "+"
            if meta.get("choices"):
                kwargs["choices"] = [c for c in meta["choices"] if c is not None]
        parser.add_argument(flag_name(f.name), **kwargs)


def as_flag(message: str) -> str:
    """'seq_len: must be ...' -> '--seq-len: must be ...' so errors name the flag to change."""
    match = re.match(r"^([a-z_]+)(/[a-z_]+)?:", message)
    if not match:
        return message
    names = "/".join("--" + n.replace("_", "-") for n in match.group(0)[:-1].split("/"))
    return names + message[match.end() - 1 :]


def one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(message: str) -> int:
    print(f"error: {one_line(as_flag(message))}", file=sys.stderr)
    return 2


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="data folder (default: $PSILONET_DATA or ./data)")


def data_dir(value: str | None, *, writable: bool = True) -> Path:
    """The data folder from ``--data-dir`` or ``$PSILONET_DATA``, checked before any work.

    An empty value, a file, or (for jobs that write) a folder that cannot be written is a
    JobError naming where the value came from.
    """
    if value is None:
        env = os.environ.get("PSILONET_DATA")
        if env is not None and not env.strip():
            raise JobError("PSILONET_DATA: is set but empty; unset it (to use ./data) or name a folder")
        name, path = ("PSILONET_DATA" if env else "--data-dir"), runtime.data_dir()
    else:
        if not value.strip():
            raise JobError("--data-dir: empty path")
        name, path = "--data-dir", Path(value)
    if path.exists() and not path.is_dir():
        raise JobError(f"{name}: {path} is a file, not a folder")
    if writable:
        existing = next(p for p in [path, *path.absolute().parents] if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise JobError(f"{name}: cannot write in {existing} (read-only or not a folder)")
    return path


def _fault(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return f"the disk is full ({exc.filename or 'while writing'}): free some space, then resume the run"
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, JobFault):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the input was wrong (exit 2); checked after the faults."""
    from psilonet import corpora
    from psilonet.model import loading as modeling
    from psilonet.store import StoreError

    return (JobError, ValueError, corpora.CorpusError, modeling.ModelError, StoreError)


def job(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a job's ``main(argv)``: every way out is an exit code and at most one line.

    No traceback reaches the user; ``PSILONET_DEBUG=1`` re-raises for developers.
    """

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        from psilonet.store import StoreLockedError
        from psilonet.training.loop import TrainingDiverged

        try:
            return main(argv)
        except SystemExit as exc:  # argparse (--help, or a bad flag already reported)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C): a run already begun is marked interrupted; continue a training run "
                  "with --resume RUN_ID, or run the job again", file=sys.stderr)
            return 130
        except Exception as exc:
            if os.environ.get("PSILONET_DEBUG"):
                raise
            if isinstance(exc, FileNotFoundError) and not exc.errno:  # raised by our code about a given name
                return fail(str(exc))
            if isinstance(exc, (JobFault, TrainingDiverged, StoreLockedError, OSError, MemoryError)):
                print(f"error: {one_line(_fault(exc))}", file=sys.stderr)
                return 1
            if isinstance(exc, _user_errors()):
                return fail(str(exc))
            print(f"error: unexpected {one_line(_fault(exc))} (PSILONET_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
            return 1

    return wrapped
