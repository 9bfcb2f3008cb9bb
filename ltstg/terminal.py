"""What the command line shows: results on stdout (a rich table, or JSON with --json), progress bars and notes
on stderr, and user errors as red lines with exit code 2. Only the CLI modules import this."""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

import click
import typer
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ltstg import launcher
from ltstg.errors import LtstgError
from ltstg.tables import Cells, for_terminal

stdout = Console(soft_wrap=True)
UNBOUNDED = 100_000  # columns: wider than any table
stderr = Console(stderr=True, soft_wrap=True)
PLAIN_EVERY = 30.0  # seconds between progress lines when stderr is a log file, not a terminal


@dataclass(frozen=True)
class Options:
    """The global options, given before the command."""

    store: Path
    json: bool
    device: str
    seed: Optional[int]
    log: Optional[tuple[str, Path]] = None  # (csv | tensorboard, DIR): where every artifact's scalars go
    time_limit: Optional[float] = None  # seconds: --time-limit


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LtstgError into red lines on stderr and exit code 2 (a `--time-limit` stop: 3), Ctrl-C into one line
    and 130, a SIGTERM (torchrun's stop, a batch system's) into one line and 143; everything else keeps its
    traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with launcher.handling():
            try:
                return command(*args, **kwargs)
            except LtstgError as error:
                launcher.leaving()
                code = getattr(error, "exit_code", 2)
                label = ("error:", "red") if code == 2 else ("stopped:", "yellow")
                if code == 2 or os.environ.get("RANK", "0") == "0":  # every rank stops at once: the first one says it
                    for line in str(error).splitlines() or ["error"]:
                        stderr.print(Text.assemble(label, " ", line), highlight=False)
                raise typer.Exit(code) from None
            except KeyboardInterrupt:
                _interrupted()
            except launcher.Stopped:
                _stopped()
            except Exception as error:
                if isinstance(error, (click.exceptions.Exit, click.ClickException)):
                    raise
                echo = _raised_while_unwinding(error)
                if isinstance(echo, KeyboardInterrupt):
                    _interrupted()
                if isinstance(echo, launcher.Stopped) or launcher.stopped_soon():
                    _stopped()
                launcher.leaving()  # a bug's traceback is printed whole, whatever torchrun does meanwhile
                raise

    return wrapper


def _raised_while_unwinding(error: BaseException) -> Optional[BaseException]:
    """The Ctrl-C or torchrun stop that `error` was raised while handling, if any: torch.save's zip writer,
    interrupted mid-write, fails in its `__exit__` ("unexpected pos"), and that error replaces the interrupt."""
    seen = error.__context__
    while seen is not None:
        if isinstance(seen, (KeyboardInterrupt, launcher.Stopped)):
            return seen
        seen = seen.__context__
    return None


def _interrupted() -> NoReturn:
    launcher.leaving()
    stderr.print(
        "interrupted: the stage in progress was not committed; a rerun resumes from its last checkpoint",
        highlight=False,
    )
    raise typer.Exit(130) from None


def _stopped() -> NoReturn:
    under_torchrun = launcher.under_torchrun()
    launcher.leaving()
    if under_torchrun:
        message = ("stopped: torchrun ended this rank because another rank stopped first (its output says why); "
                   "the stage in progress was not committed")
    else:
        message = ("stopped: SIGTERM (a batch system's time limit, or kill); the stage in progress was not "
                   "committed; a rerun resumes from its last checkpoint")
    stderr.print(message, highlight=False)
    raise typer.Exit(launcher.STOPPED_EXIT_CODE) from None


class RichProgress:
    """The stages' `progress(task, done, total, **metrics)` as rich progress bars on stderr, and their notes."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=stderr,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.enabled = enabled
        self.plain = enabled and not stderr.is_terminal  # a log file gets a line every PLAIN_EVERY seconds
        self.last_line: dict[str, float] = {}
        self.said: set[str] = set()

    def __enter__(self) -> "RichProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.tasks:  # started on the first report: a command that fails early prints no empty bar line
            self.progress.stop()

    def __call__(self, task: str, done: int, total: int, **metrics: float) -> None:
        shown = "  ".join(f"{k} {fmt(v)}" for k, v in metrics.items())
        if not self.tasks:
            self.progress.start()
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total, metrics=shown)
        self.progress.update(self.tasks[task], completed=done, total=total, metrics=shown)
        if self.plain:
            now = time.monotonic()
            if done >= total or now - self.last_line.get(task, 0.0) >= PLAIN_EVERY:
                self.last_line[task] = now
                stderr.print(f"{task} {done}/{total}  {shown}", highlight=False, markup=False)

    def note(self, message: str) -> None:
        """Say a note once: a sweep that reuses one artifact, or gets one note from every report, repeats it."""
        if message in self.said:
            return
        self.said.add(message)
        self.progress.console.print(Text(message, style="dim"), highlight=False)


PICTURES = (".png", ".pdf", ".svg")  # what matplotlib writes by the name's suffix


def output_file(path: Optional[Path], suffixes: Sequence[str], flag: str) -> Optional[Path]:
    """A file a command will write outside the store, checked before any work: a file name with a known suffix
    (so the path said is the path written), not a folder, under a folder that exists or can be made, writable."""
    if path is None:
        return None
    if path.is_dir():
        raise LtstgError(f"{flag} {path} is a folder; give a file name, e.g. {path / ('out' + suffixes[0])}.")
    if path.suffix.lower() not in suffixes:
        raise LtstgError(f"{flag} {path}: give a file name ending in {' or '.join(suffixes)}.")
    writable_folder(path.absolute().parent, f"{flag} {path}")
    return path


def writable_folder(folder: Path, said: str) -> Path:
    """A folder files will be written into, checked before any work: it exists or can be made, and is writable
    (`said`: how the error names what was asked, e.g. the flag and its value)."""
    found = folder.absolute()
    while not found.exists():  # the missing folders are made when the first file is written
        found = found.parent
    if not found.is_dir():
        raise LtstgError(f"{said}: {found} is a file, so no folder can be made there.")
    if not os.access(found, os.W_OK | os.X_OK):
        raise LtstgError(f"{said}: the folder {found} is not writable.")
    return folder


def note(message: str) -> None:
    """A line for people on stderr (what was written, what was picked), never on stdout."""
    stderr.print(Text(message, style="dim"), highlight=False)


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e12:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def emit(options: Options, payload: dict[str, Any], table: Table | Tree | None) -> None:
    """The result: JSON for scripts, or a rich table for people. Nothing else goes to stdout."""
    if options.json:
        sys.stdout.write(json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False) + "\n")
    elif table is not None:
        print_whole(table)


def print_whole(renderable: Table | Tree) -> None:
    """A terminal folds a table to its width; a file or a pipe gets it at its natural width, every cell whole (rich
    would otherwise draw it 80 columns wide, or $COLUMNS, and cut the cells that do not fit)."""
    if stdout.is_terminal:
        stdout.print(renderable)
        return
    width = Measurement.get(stdout, stdout.options.update(max_width=UNBOUNDED), renderable).maximum
    Console(file=stdout.file, width=width, soft_wrap=True).print(renderable)


def json_safe(value: Any) -> Any:
    """NaN and infinities become null, so `jq` and strict JSON readers accept the output."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def text_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] = (),
               wrap: Sequence[str] = ()) -> Table:
    """A rich table of plain text: cells are never read as markup, so `[not converged: 1 of 3]` stays.
    Names (left-aligned) keep to one line unless their column is in `wrap`."""
    table = Table(title=Text(title), title_justify="left")
    for index, name in enumerate(header):
        justify = align[index] if index < len(align) else "left"
        no_wrap = justify == "left" and name not in wrap
        table.add_column(Text(name), justify=justify, no_wrap=no_wrap)  # type: ignore[arg-type]
    for cells in rows:
        table.add_row(*(Text(str(cell)) for cell in cells))
    return table


def methods_table(title: str, cells: Cells) -> Table:
    """A methods table (ltstg.tables) in the terminal: the columns every format shares, minus the id."""
    shown = for_terminal(cells)
    return text_table(title, shown.header, shown.body, shown.align, wrap=("Chosen on val",))  # one choice per seed


def result_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(Text(key), Text(fmt(value)))
    return table


def artifact_summary(result: Any) -> dict[str, Any]:
    artifact = result.artifact
    return {
        "id": artifact.id,
        "kind": artifact.kind,
        "reused": result.reused,
        "parents": artifact.parents,
        "metrics": artifact.metrics,
        "wall_clock": artifact.meta.get("wall_clock"),
    }


def show_results(options: Options, results: list[Any], title: str) -> None:
    """The artifacts a command made or reused: kind, id, new or reused, metrics, seconds."""
    payload: dict[str, Any] = {"artifacts": [artifact_summary(r) for r in results]}
    if len(results) == 1:
        payload = payload["artifacts"][0]
    rows = []
    for r in results:
        a = r.artifact
        metrics = "  ".join(f"{k} {fmt(v)}" for k, v in a.metrics.items())
        rows.append([a.kind, a.id[:12], "reused" if r.reused else "new", metrics, fmt(a.meta.get("wall_clock"))])
    emit(options, payload, text_table(title, ["kind", "id", "status", "metrics", "seconds"], rows, wrap=["metrics"]))


def run_context(options: Options, progress: RichProgress, force: bool = False) -> Any:
    """The stages' context for this invocation: device and process group set up once, in ltstg.runtime."""
    from ltstg.runtime import make_context

    return make_context(options.store, options.device, force=force, progress=progress, note=progress.note,
                        logged=scalar_logger(options), time_limit=options.time_limit)


def scalar_logger(options: Options) -> Callable[[Any], None]:
    """What `--log FORMAT DIR` asks for, done for every artifact a command makes or reuses: its training scalars
    as `DIR/<kind>-<id>.csv`, and with tensorboard also as the TensorBoard run `DIR/<kind>-<id>` (an artifact's
    scalars never change, so a run already there is left as it is)."""
    if options.log is None:
        return lambda result: None
    from ltstg.inspect.scalars import scalars, to_csv, write_tensorboard
    from ltstg.store import atomic_write

    kind, folder = options.log

    def log(result: Any) -> None:
        artifact = result.artifact
        rows = scalars(artifact)
        if not rows:
            return
        name = f"{artifact.kind}-{artifact.id[:12]}"
        atomic_write(folder / f"{name}.csv", [to_csv(artifact, rows).encode("utf-8")])  # an OS error: one line
        if kind == "tensorboard" and not (folder / name).exists():
            write_tensorboard(artifact, rows, folder)

    return log


def pick_on_every_rank(run: Any, ref: Optional[str], kind: str) -> Any:
    """`pick` as the first rank decides it under torchrun, so no rank trains on another "newest" artifact; every
    rank must see it in its store."""
    from ltstg import ranks

    picked: list[Any] = []
    chosen = ranks.first_rank(lambda: picked.append(pick(run, ref, kind)) or picked[0].id)
    ranks.all_see(bool(picked) or run.store.exists(chosen), f"{kind} {chosen[:12]}")
    return picked[0] if picked else run.store.get(chosen, kind)


def pick(run: Any, ref: Optional[str], kind: str, *, parent: Optional[str] = None) -> Any:
    """The artifact a command works on; without a reference, the newest (made from `parent`), and say which."""
    artifact = run.store.find(ref, kind, parent=parent)
    if ref is None:
        run.note(f"using {kind} {artifact.id[:12]} (the newest{' for these features' if parent else ''})")
    return artifact
