"""`ingest`: the Typer command line over core's services.

Heavy libraries load inside the commands, so `ingest --help` stays instant.
Exit codes: 0 success; 1 an error, or some photos failed (still reported); 2 usage error.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from core.errors import ShoeSearchError

if TYPE_CHECKING:
    from core.settings import Settings

app = typer.Typer(
    name="ingest",
    help="Index shoe photos (YOLO crops + CLIP vectors in Qdrant) and query the index.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _settings() -> Settings:
    from core.settings import Settings

    return Settings()


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _user_errors():
    """Turn the errors a user can act on into one line on stderr and exit code 1."""
    try:
        yield
    except ShoeSearchError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; rerun the same command to continue where it stopped", 130) from None


@contextlib.contextmanager
def _open_store(settings: Settings):
    from core.wiring import open_store

    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@app.command()
def add(
    path: Annotated[Path, typer.Argument(help="A factory folder (or one photo).", exists=True)],
    factory: Annotated[Optional[str], typer.Option(help="Factory name (default: the folder's name).")] = None,
    manifest: Annotated[Optional[Path], typer.Option(
        help="CSV with path,product_id[,factory,extra...] overriding the folder layout.",
        exists=True, dir_okay=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a factory folder's photos to the index. Reruns skip unchanged photos."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from core.catalogue import discover
    from core.wiring import ingest_service

    settings = _settings()
    with _user_errors():
        sources = list(discover(path, factory=factory, manifest=manifest))
        label = factory or (path.name if path.is_dir() else path.parent.name)
        with _open_store(settings) as store:
            service = ingest_service(settings, store)
            console = Console(stderr=True)
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=console, transient=as_json,
                          disable=not console.is_terminal) as bar:
                task = bar.add_task(f"ingest {label}", total=len(sources))
                report = service.add(sources, label, progress=lambda done, _: bar.update(task, completed=done))
    if as_json:
        _print_json(report.to_dict())
    else:
        typer.echo(
            f"{report.factory}: {report.photos_seen} photos seen, {report.photos_added} added "
            f"({report.crops_added} crops), {report.photos_unchanged} unchanged, "
            f"{report.photos_updated} updated, {len(report.photos_failed)} failed in {report.seconds:.1f}s"
        )
        for failed in report.photos_failed:
            typer.echo(f"  skipped {failed.path}: {failed.error}", err=True)
    if report.photos_failed:
        raise typer.Exit(1)


@app.command()
def stats(as_json: JsonFlag = False) -> None:
    """Points, photos, per-factory counts, model and store location."""
    from core.search_service import index_stats

    settings = _settings()
    with _user_errors(), _open_store(settings) as store:
        data = index_stats(store)
    if as_json:
        _print_json(data)
        return
    typer.echo(f"store:    {data['location']} (collection {data['collection']})")
    typer.echo(f"model:    {data['model'] or '-'} ({data['dimension'] or '-'}-d)")
    typer.echo(f"points:   {data['points']} crops from {data['photos']} photos")
    for name, counts in data["factories"].items():
        typer.echo(f"  {name:<24} {counts['crops']:>8} crops {counts['photos']:>8} photos")


@app.command()
def search(
    text: Annotated[Optional[str], typer.Option("--text", help="Describe the shoe.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="A query photo.", exists=True, dir_okay=False)] = None,
    factory: Annotated[Optional[list[str]], typer.Option("--factory", help="Only these factories (repeatable).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=1000)] = 10,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Minimum cosine similarity.")] = None,
    whole: Annotated[bool, typer.Option("--whole", help="Query with the whole photo, skip detection.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Find crops by text or by photo, optionally within some factories."""
    if (text is None) == (image is None):
        raise typer.BadParameter("give exactly one of --text or --image")
    from core.images import load_photo
    from core.search_service import build_where
    from core.wiring import search_service

    settings = _settings()
    where = build_where(factory)
    with _user_errors(), _open_store(settings) as store:
        service = search_service(settings, store)
        if text is not None:
            hits = service.search_text(text, where=where, top_k=top_k, min_score=min_score)
            query: dict[str, Any] = {"text": text}
        else:
            photo = load_photo(image, settings.max_image_pixels)
            crop = service.query_crops(photo)[-1 if whole else 0]
            hits = service.search_image(crop.image, where=where, top_k=top_k, min_score=min_score)
            query = {"image": str(image), "region": crop.label}
    if as_json:
        _print_json({"query": query, "filter": where,
                     "hits": [{"point_id": h.point_id, "score": round(h.score, 6), "payload": h.payload} for h in hits]})
        return
    if not hits:
        typer.echo("no hits")
    for rank, hit in enumerate(hits, start=1):
        typer.echo(f"{rank:>3}. {hit.score:.4f}  {hit.factory:<16} {hit.product_id:<20} {hit.payload.get('photo_path')}"
                   + (f"  box={hit.payload['box']}" if hit.payload.get("box") else ""))


@app.command()
def remove(
    factory: Annotated[Optional[str], typer.Option(help="Remove every crop of this factory.")] = None,
    path: Annotated[Optional[Path], typer.Option(help="Remove crops of this photo, or of all photos under this folder.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete crops by factory and/or photo path (asks first unless --yes)."""
    if factory is None and path is None:
        raise typer.BadParameter("give --factory and/or --path")
    from core.wiring import ingest_service

    settings = _settings()
    with _user_errors(), _open_store(settings) as store:
        service = ingest_service(settings, store)
        points = service.find(factory=factory, path=path)
        photos = {p.payload.get("photo_path") for p in points}
        what = f"{len(points)} crops of {len(photos)} photos"
        if dry_run:
            removed = 0
        elif points and not yes and not typer.confirm(f"Remove {what}?", err=True):
            raise typer.Exit(1)
        else:
            removed = service.remove(points)
    if as_json:
        _print_json({"matched": len(points), "photos": len(photos), "removed": removed, "dry_run": dry_run})
    else:
        typer.echo(f"would remove {what}" if dry_run else f"removed {removed} crops of {len(photos)} photos")


def main() -> None:  # pragma: no cover - console entry convenience
    app(prog_name="ingest")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
