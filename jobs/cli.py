"""What every job shares: options derived from the configs, config files, the data folder, and
one way to end: a one-line message, never a traceback.

Exit codes, one meaning each:

* 0 done;
* 2 bad input (an option, a config key, a file, an environment variable): refused in one line
  before any model loads or any run row is written, so nothing was written;
* 1 a fault during the work (full disk, diverged training, an unreadable file, a catalog locked
  for too long): the run is recorded as failed with the reason and, except for a training run
  (which resumes from its staging folder), its partial files are removed;
* 130 interrupted with Ctrl-C, 143 terminated (SIGTERM): the run is recorded as ``interrupted``
  and the last line names it and how to continue it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import signal
import sys
import threading
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable

from psilonet import config as configs
from psilonet import runtime
from psilonet.files import path_problem


class JobError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class JobFault(Exception):
    """The work could not be done (not the input's fault); one line, exit code 1."""


class JobParser(argparse.ArgumentParser):
    """argparse with its errors as one line (``error: --seed: invalid int value: 'x'``), exit 2."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[-1] + ": ", message)
        raise SystemExit(fail(f"{message} (see {self.prog} --help)"))

    def parse_args(self, args=None, namespace=None):
        """Also refuses an empty value (``--layers ''``, ``--run ''``): it never means the default."""
        parsed = super().parse_args(args, namespace)
        for dest, value in vars(parsed).items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and not v.strip() for v in values):
                if dest == "data_dir":  # data_dir() says where an empty folder setting came from
                    continue
                self.error(f"argument --{dest.replace('_', '-')}: is empty; give a value or leave the flag out")
        return parsed


def read_config_file(path: str | None) -> dict[str, Any]:
    """Options from a TOML or JSON file (flags given on the command line override them)."""
    if not path:
        return {}
    p = Path(path)
    problem = path_problem(p)
    if problem:
        raise JobError(f"--config: {p} {problem}")
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


def warn(message: str) -> None:
    """One line about a value that has no effect or was adjusted; the job goes on."""
    print(f"warning: {one_line(as_flag(message))}", file=sys.stderr)


_OFF = ("", "0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


def debug() -> bool:
    """``PSILONET_DEBUG``: 1/true/yes/on re-raise for developers; 0/false/no/off or unset do not."""
    value = os.environ.get("PSILONET_DEBUG", "").strip().lower()
    if value in _OFF:
        return False
    if value not in _ON:
        warn(f"PSILONET_DEBUG: {value!r} is not one of 1/true/yes/on or 0/false/no/off; reading it as on")
    return True


def _again(run: tuple[str, str] | None) -> str:
    """How to continue a run that ended early."""
    if run is None:
        return "run the job again"
    run_id, kind = run
    if kind == "train":
        return f"continue it with: python -m jobs.train --resume {run_id}"
    if kind == "sweep":
        return "run the sweep again (it skips the configs already done)"
    return "its partial files were removed; run the job again"


def _where(exc: BaseException) -> str:
    """The file an OSError (or one it came from) names, if any."""
    for _ in range(16):  # a chain of causes is short; never follow a cycle
        if exc is None:
            break
        if isinstance(exc, OSError) and exc.filename:
            return str(exc.filename)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return ""


def _fault(exc: BaseException) -> str:
    from psilonet.store.errors import disk_full

    run = getattr(exc, "psilonet_run", None)
    if disk_full(exc):
        where = _where(exc)
        text = f"the disk is full{f' ({where})' if where else ''}"
        if run and run[1] not in ("train", "sweep"):
            return f"{text}; run {run[0]} failed and its partial files were removed; " \
                   "free some space, then run the job again"
        return f"{text}: free some space, then {_again(run)}"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, JobFault):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _end_bars() -> None:
    """Close the progress bars still open, so that the job's last line starts a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _terminate(signum, frame):
    from psilonet.store.errors import Terminated

    raise Terminated()


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
        from psilonet.store.errors import CatalogBehind, Terminated, disk_full
        from psilonet.training.loop import TrainingDiverged

        # SIGTERM ends a run as Ctrl-C does (marked interrupted), only where a handler may be set.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return main(argv)
        except SystemExit as exc:  # argparse (--help, or a bad flag already reported)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except KeyboardInterrupt as exc:
            _end_bars()
            how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
            run = getattr(exc, "psilonet_run", None)
            if run:
                print(f"{how}: run {run[0]} is marked interrupted; {_again(run)}", file=sys.stderr)
            else:
                print(f"{how}: no run was begun; run the job again", file=sys.stderr)
            return 143 if isinstance(exc, Terminated) else 130
        except Exception as exc:
            _end_bars()
            if debug():
                raise
            run = getattr(exc, "psilonet_run", None)  # set when the error ended a begun run
            if disk_full(exc):
                print(f"error: {one_line(_fault(exc))}", file=sys.stderr)
                return 1
            ours = isinstance(exc, FileNotFoundError) and not exc.errno  # raised by our code about a given name
            user = ours or (isinstance(exc, _user_errors()) and not isinstance(exc, (StoreLockedError, CatalogBehind)))
            if user and run is None:
                return fail(str(exc))
            if isinstance(exc, CatalogBehind):
                text = str(exc)
            elif user or isinstance(exc, (JobFault, TrainingDiverged, StoreLockedError, OSError, MemoryError)):
                text = as_flag(str(exc)) if user else _fault(exc)
            else:
                text = f"unexpected {_fault(exc)} (PSILONET_DEBUG=1 shows the traceback)"
            if run is not None:  # a fault during the work: the run is recorded as failed
                text += f"; run {run[0]} failed" + ("" if run[1] == "train" else
                                                     " and its partial files were removed")
            print(f"error: {one_line(text)}", file=sys.stderr)
            return 1
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapped
