"""effedge cache list | clean: what effedge keeps on disk (the cache and ./runs build folders), and tidying it."""
from __future__ import annotations

import time
from pathlib import Path

import click

from effedge.cache import MAX_DURATION_S, build_folders, cache_source, clean, list_cache, parse_duration
from effedge.cli.main import cli
from effedge.cli.options import print_json
from effedge.errors import EffedgeError, RunError


class Duration(click.ParamType):
    """``30m``, ``12h``, ``7d``, ``2w`` as seconds: more than 0, at most ``max`` (effedge.cache.parse_duration)."""

    name = "duration"
    max = MAX_DURATION_S  # tests/test_cli_validation.py walks this range

    def convert(self, value, param, ctx):
        try:
            return parse_duration(value)
        except EffedgeError as exc:
            self.fail(str(exc), param, ctx)


def size_text(count: int) -> str:
    """Bytes as people read them: 833.4 MB, 1.3 GB (powers of 1000, as du -h --si)."""
    for factor, suffix in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if count >= factor:
            return f"{count / factor:.1f} {suffix}"
    return f"{count} B"


def age_text(seconds: float) -> str:
    for factor, suffix in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= factor:
            return f"{seconds / factor:.0f} {suffix} ago"
    return "just now"


def _rows(entries, now: float) -> None:
    for entry in entries:
        click.echo(f"  {entry.kind:16s} {entry.path.name:44s} {size_text(entry.bytes):>9s}  "
                   f"{age_text(now - entry.modified):>11s}" + (f"  {entry.state}" if entry.state else ""))


@cli.group()
def cache() -> None:
    """What effedge keeps on disk to skip work, and tidying it.

    \b
    The cache ($EFFEDGE_CACHE_DIR, else $XDG_CACHE_HOME/effedge, else ~/.cache/effedge) holds Q/DQ
    placements, calibration ranges, TensorRT timing caches, planner costs and self-calibration builds, and
    sweep data; ./runs holds compile's build folders. Everything there can be recomputed.
    \b
    Examples:
      effedge cache list
      effedge cache clean --older-than 7d --dry-run
      effedge cache clean --all --runs
    """


@cache.command("list")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Also list the effedge build folders in this directory.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(runs_dir: str, as_json: bool) -> None:
    """Entries of the cache and build folders: kind, name, size, when last used, and the totals.

    \b
    Examples:
      effedge cache list
      effedge cache list --runs ~/experiments/runs --json
    """
    now = time.time()
    listing, builds = list_cache(), build_folders(Path(runs_dir))
    if as_json:
        print_json({"root": str(listing.root), "from": cache_source(), "bytes": listing.bytes,
                    "entries": [e.to_json(now) for e in listing.entries], "others": [str(p) for p in listing.others],
                    "notes": listing.notes,
                    "runs": {"dir": runs_dir, "bytes": sum(b.bytes for b in builds),
                             "entries": [b.to_json(now) for b in builds]}})
        return
    click.echo(f"cache: {listing.root} (from {cache_source()}): {size_text(listing.bytes)} in "
               f"{len(listing.entries)} entries")
    _rows(listing.entries, now)
    for other in listing.others:
        click.echo(f"  not effedge's, never cleaned: {other}")
    for note in listing.notes:
        click.echo(f"  note: {note}")
    if builds:
        click.echo(f"build folders in {runs_dir}: {size_text(sum(b.bytes for b in builds))} ({len(builds)} folders)")
        _rows(builds, now)


@cache.command("clean")
@click.option("--older-than", type=Duration(), metavar="DURATION",
              help="Remove entries not used for this long: 30m, 12h, 7d, 2w (build folders: not changed for this "
              "long; running a model does not count as use).")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option("--runs", "runs_dir", is_flag=False, flag_value="runs", type=click.Path(file_okay=False),
              metavar="[DIR]", help="Also remove build folders (those holding an effedge build.json) in DIR "
              "[DIR default: ./runs]; other folders there are never touched.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def clean_command(older_than, everything: bool, runs_dir, dry_run: bool, as_json: bool) -> None:
    """Remove cache entries (and with --runs, build folders) older than a duration, or all of them.

    \b
    Only what effedge made is removed, only inside the cache root (or DIR), symlinks are never followed,
    and each entry disappears whole, so a run at the same time never sees half of one.
    \b
    Examples:
      effedge cache clean --older-than 7d
      effedge cache clean --older-than 12h --dry-run
      effedge cache clean --all --runs              also the build folders in ./runs
      effedge cache clean --older-than 30d --runs ~/experiments/runs --json
    """
    if (older_than is None) == (not everything):
        raise click.UsageError("give --older-than DURATION or --all (one of them)")
    listing = list_cache()
    selection = dict(older_than=older_than, everything=everything, dry_run=dry_run)
    reports = {"cache": (f"cache {listing.root}", clean(listing.entries, listing.root, **selection))}
    if runs_dir is not None:
        runs = Path(runs_dir)
        reports["runs"] = (f"build folders in {runs}", clean(build_folders(runs), runs, **selection))
    errors = [error for _, report in reports.values() for error in report.errors]
    if as_json:
        now = time.time()
        print_json({"dry_run": dry_run, **{key: {"removed": [e.to_json(now) for e in report.removed],
                                                 "freed_bytes": report.freed_bytes, "kept": len(report.kept),
                                                 "errors": report.errors} for key, (_, report) in reports.items()}})
    else:
        verb = "would remove" if dry_run else "removed"
        for label, report in reports.values():
            click.echo(f"{label}: {verb} {len(report.removed)} entries ({size_text(report.freed_bytes)}), "
                       f"kept {len(report.kept)}")
            for entry in report.removed:
                click.echo(f"  {entry.kind:16s} {entry.path.name:44s} {size_text(entry.bytes):>9s}")
    if errors:
        raise RunError(f"could not remove {len(errors)} entries, e.g. {errors[0]}")
