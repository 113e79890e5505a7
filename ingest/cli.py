"""`ingest`: the Typer command line over core's services.

Heavy libraries load inside the commands, so `ingest --help` stays instant.
Exit codes: 0 success; 1 an error, or some photos failed (still reported); 2 usage error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from core.domain.options import REVIEW_ORDER, Level, Linkage, Method, Scope
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
WaitOption = Annotated[Optional[float], typer.Option(
    "--wait", min=0, metavar="SECONDS",
    help="If another process holds the embedded store, wait up to this long for it (default: STORE_LOCK_WAIT).")]


def _settings(wait: float | None = None) -> Settings:
    from core.settings import load_settings

    try:
        settings = load_settings()
    except ShoeSearchError as exc:
        raise _fail(str(exc)) from None
    return settings if wait is None else settings.model_copy(update={"store_lock_wait": wait})


def _say_waiting(holder: str, seconds: float) -> None:
    typer.echo(f"waiting up to {seconds:g}s for the embedded store, in use by process {holder} ...", err=True)


def _fail(message: str, code: int = 1, as_json: bool = False) -> typer.Exit:
    """One line on stderr; with --json also {"error", "exit_code"} on stdout, so stdout stays one JSON object."""
    typer.echo(f"error: {message}", err=True)
    if as_json:
        _print_json({"error": message, "exit_code": code})
    return typer.Exit(code)


@contextlib.contextmanager
def _user_errors(as_json: bool = False):
    """Turn the errors a user can act on into one line on stderr and exit code 1 (with `as_json`,
    also a JSON object on stdout)."""
    try:
        yield
    except ShoeSearchError as exc:
        raise _fail(str(exc), as_json=as_json) from None
    except OSError as exc:  # a full disk or an unwritable output path: one line too
        from core.store.diskspace import write_error

        error = write_error(exc)
        if error is None:
            raise
        raise _fail(str(error), as_json=as_json) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; rerun the same command to continue where it stopped", 130, as_json) from None


def _open_app(settings: Settings, write: bool = False):
    """The App (core/app.py): its parts are built on first use and closed after. `write`: the
    command writes (with a running search UI holding the embedded store, the command then holds
    the UI's write lease; reads need none)."""
    from core.app import open_app

    return open_app(settings, write=write, on_wait=_say_waiting)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _check_factories(store, names: Optional[list[str]] | Optional[str]) -> None:
    """Stop with the known factories (and close names) when a --factory names none of them."""
    if not names:
        return
    from core.catalogue.folders import check_known_factories

    check_known_factories([names] if isinstance(names, str) else names, store.facet("factory"))


@app.command()
def add(
    paths: Annotated[list[Path], typer.Argument(
        help="Factory folders, each its own factory (ingest add shoes/*), or one photo.", exists=True,
        metavar="FOLDER...")],
    factory: Annotated[Optional[str], typer.Option(
        help="Factory name (default: the folder's name); only with one folder.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(
        help="CSV with path,product_id[,factory,extra...] overriding the folder layout; only with one folder.",
        exists=True, dir_okay=False)] = None,
    prune: Annotated[bool, typer.Option(
        "--prune", help="Also remove this factory's photos under the folder whose files are gone.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="With --prune: only count what would be pruned; nothing is added or removed.")] = False,
    one_factory: Annotated[bool, typer.Option(
        "--one-factory", help="Index the folder as one factory even if its subfolders look like factories.")] = False,
    part: Annotated[Optional[str], typer.Option(
        "--part", metavar="I/N", help="Only part I of N of the photos (a stable split by each photo's path in its "
        "folder): N workers, on one or several machines, share the folders into one Qdrant server.")] = None,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Add factory folders' photos to the index. Reruns skip unchanged photos."""
    if len(paths) > 1 and (factory or manifest):
        raise typer.BadParameter("only with one folder (several folders are each their own factory)",
                                 param_hint="--factory" if factory else "--manifest")
    if dry_run and not prune:
        raise typer.BadParameter("--dry-run only applies to --prune", param_hint="--dry-run")
    part_of_n = None
    if part is not None:
        from core.catalogue.parts import parse_part

        if prune:
            raise typer.BadParameter("--prune needs the whole folder: run it without --part after the parts",
                                     param_hint="--prune")
        try:
            part_of_n = parse_part(part)
        except ShoeSearchError as exc:
            raise typer.BadParameter(str(exc), param_hint="--part") from None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from core.catalogue.folders import check_has_photos, discover, factory_name, factory_subfolders
    from core.domain.types import IngestReport
    from core.errors import NotAFactoryFolder

    settings = _settings(wait)
    with _user_errors(as_json):
        unique: dict[str, Path] = {}
        for path in paths:  # the same folder named twice is ingested once
            unique.setdefault(os.path.abspath(path), path)
        plans = []
        for given in unique.values():
            if given.is_file() and len(unique) > 1:
                raise NotAFactoryFolder(f"{given} is a file, not a factory folder: give folders only "
                                        f"(ingest add shoes/*/ matches only folders)")
            if prune and given.is_file():
                raise NotAFactoryFolder(f"{given} is a file: --prune needs the factory folder it lies in")
            sources = list(discover(given, factory=factory, manifest=manifest))
            check_has_photos(given, sources)
            plans.append((given, factory or factory_name(given), sources))
        with _open_app(settings, write=True) as opened:
            store, _ = opened.store, opened.head_index  # a missing PROJECTION_HEAD stops before any work
            if not (manifest or one_factory):
                known = set(store.facet("factory"))
                for given, label, sources in plans:
                    nested = factory_subfolders(given, sources, known, label)
                    if nested:
                        shown = ", ".join(nested[:3]) + (", ..." if len(nested) > 3 else "")
                        raise NotAFactoryFolder(
                            f"{given} holds factory folders ({shown}), not products: index each as its own factory "
                            f"with `ingest add {given}/*`, or one with `ingest add {given}/{nested[0]}` "
                            f"(--one-factory to index it as one factory anyway)")
            service = opened.ingest
            console = Console(stderr=True)
            reports = []
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=console, transient=as_json,
                          disable=not console.is_terminal) as bar:
                for given, label, sources in plans:
                    if part_of_n is not None:  # this worker's share; the folder checks above saw all of it
                        from core.catalogue.parts import part_of

                        sources = [s for s in sources if part_of(s.path, given, part_of_n[1]) == part_of_n[0]]
                    task = bar.add_task(f"ingest {label}", total=len(sources))
                    if dry_run:
                        report = IngestReport(factory=label, photos_seen=len(sources))
                    else:
                        report = service.add(sources, label,
                                             progress=lambda done, _, task=task: bar.update(task, completed=done))
                    if prune:
                        started = time.perf_counter()
                        service.prune(report, given, [s.path for s in sources], dry_run=dry_run)
                        report.seconds += time.perf_counter() - started
                    reports.append((given, report))
    summary = _add_summary(reports, prune, dry_run)
    if part is not None:
        summary["part"] = f"{part_of_n[0]}/{part_of_n[1]}"
    if as_json:
        _print_json(summary)
    else:
        for given, report in reports:
            typer.echo(_add_line(report, prune, dry_run))
            for failed in report.photos_failed:
                typer.echo(f"  skipped {failed.path}: {failed.error}", err=True)
            for gone in report.pruned:
                typer.echo(f"  {'would prune' if dry_run else 'pruned'} {gone}")
        if len(reports) > 1:
            typer.echo(_add_line(summary, prune, dry_run, label=f"total ({len(reports)} factories)"))
    if summary["photos_failed"]:
        raise typer.Exit(1)


_ADD_COUNTS = ("photos_seen", "photos_added", "photos_unchanged", "photos_updated", "crops_added",
               "photos_pruned", "crops_pruned")


def _add_summary(reports: list, prune: bool, dry_run: bool) -> dict[str, Any]:
    """The --json of `ingest add`: the one-folder report's keys, summed over folders, plus `folders`.

    With one folder the top level is that folder's report (as before several folders were
    allowed); with several, `factory` is null and `factories` lists them."""
    folders = [{"path": os.path.abspath(path), **report.to_dict()} for path, report in reports]
    names = list(dict.fromkeys(report.factory for _, report in reports))
    summary: dict[str, Any] = {"factory": names[0] if len(reports) == 1 else None, "factories": names}
    summary.update({key: sum(folder[key] for folder in folders) for key in _ADD_COUNTS})
    summary["photos_failed"] = [failed for folder in folders for failed in folder["photos_failed"]]
    summary["pruned"] = [gone for folder in folders for gone in folder["pruned"]]
    summary.update({"prune": prune, "dry_run": dry_run,
                    "seconds": round(sum(report.seconds for _, report in reports), 3), "folders": folders})
    return summary


def _add_line(report, prune: bool, dry_run: bool, label: str | None = None) -> str:
    """One human line for a folder's report (an IngestReport) or the summary (a dict)."""
    get = (lambda key: report[key]) if isinstance(report, dict) else (lambda key: getattr(report, key))
    failed = len(get("photos_failed"))
    name = label or get("factory")
    if dry_run:
        return (f"{name}: {get('photos_seen')} photos in the folder; would prune {get('photos_pruned')} photos "
                f"({get('crops_pruned')} crops) whose files are gone (dry run: nothing changed)")
    line = (f"{name}: {get('photos_seen')} photos seen, {get('photos_added')} added ({get('crops_added')} crops), "
            f"{get('photos_unchanged')} unchanged, {get('photos_updated')} updated, {failed} failed")
    if prune:
        line += f", {get('photos_pruned')} pruned ({get('crops_pruned')} crops)"
    return line + f" in {get('seconds'):.1f}s"


@app.command()
def stats(wait: WaitOption = None, as_json: JsonFlag = False) -> None:
    """Points, photos, per-factory counts, model and store location."""
    from core.search.service import index_stats

    settings = _settings(wait)
    with _user_errors(as_json), _open_app(settings) as opened:
        data = index_stats(opened.store)
    if as_json:
        _print_json(data)
        return
    typer.echo(f"store:    {data['location']} (collection {data['collection']})")
    typer.echo(f"model:    {data['model'] or '-'} ({data['dimension'] or '-'}-d)"
               + (f", text queries by {data['text_model']}" if data.get("text_model") else ""))
    typer.echo(f"points:   {data['points']} crops from {data['photos']} photos")
    for name, counts in data["factories"].items():
        typer.echo(f"  {name:<24} {counts['crops']:>8} crops {counts['photos']:>8} photos")


@app.command()
def search(
    text: Annotated[Optional[list[str]], typer.Option(
        "--text", metavar="TEXT", help="Describe the shoe; with a photo: words to add (\"like this, but red\"). Repeatable.")] = None,
    avoid: Annotated[Optional[list[str]], typer.Option(
        "--not", metavar="TEXT", help="Words to avoid (\"not suede\"), with a photo or --text. Repeatable.")] = None,
    text_weight: Annotated[float, typer.Option(
        "--text-weight", min=0.0, max=5.0,
        help="Weight of each added or avoided word against the photo (the photo weighs 1).")] = 1.0,
    image: Annotated[Optional[Path], typer.Option("--image", help="A query photo.", exists=True, dir_okay=False)] = None,
    image_url: Annotated[Optional[str], typer.Option(
        "--image-url", metavar="URL", help="A query photo by http(s) URL (IMAGE_URL* settings limit it).")] = None,
    crop_id: Annotated[Optional[str], typer.Option(
        "--crop-id", metavar="POINT_ID", help="An indexed crop as the query photo (a hit's point_id).")] = None,
    like: Annotated[Optional[list[str]], typer.Option(
        "--like", metavar="POINT_ID", help="Refine: find crops like this indexed crop. Repeatable.")] = None,
    dislike: Annotated[Optional[list[str]], typer.Option(
        "--dislike", metavar="POINT_ID", help="Refine: and unlike this one. Repeatable.")] = None,
    strategy: Annotated[Optional[str], typer.Option(
        help="With --like/--dislike: average_vector (default with a like) | best_score (default with dislikes "
             "only) | sum_scores.")] = None,
    factory: Annotated[Optional[list[str]], typer.Option("--factory", help="Only these factories (repeatable).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=1000)] = 10,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Minimum cosine similarity.")] = None,
    whole: Annotated[bool, typer.Option("--whole", help="Query with the whole photo, skip detection.")] = False,
    collapse_linked: Annotated[bool, typer.Option(
        "--collapse-linked", help="One result per group of products linked across factories in the review: its "
                                  "best crop, with the other factories' products listed (\"also sold as\").")] = False,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Find crops by text, by photo (file, URL or indexed crop) plus words, or by liked and disliked crops."""
    photos = [name for name, given in (("--image", image), ("--image-url", image_url), ("--crop-id", crop_id))
              if given is not None]
    refine = bool(like or dislike)
    if len(photos) > 1:
        raise typer.BadParameter(f"give one query photo, not {' and '.join(photos)}")
    if refine and (photos or text or avoid):
        raise typer.BadParameter("--like/--dislike refine by indexed crops alone: leave out --text, --not and photos",
                                 param_hint="--like")
    if not (refine or photos or text):
        raise typer.BadParameter("give --text, a photo (--image, --image-url, --crop-id) or --like/--dislike")
    if strategy is not None and not refine:
        raise typer.BadParameter("only with --like/--dislike", param_hint="--strategy")
    from core.search.service import build_where

    settings = _settings(wait)
    where = build_where(factory)
    with _user_errors(as_json), _open_app(settings) as opened:
        _check_factories(opened.store, factory)
        service = opened.search
        hits, query = _run_search(settings, service, text or [], avoid or [], text_weight, image, image_url, crop_id,
                                  like or [], dislike or [], strategy, where, top_k, min_score, whole,
                                  collapse_linked)
        if collapse_linked and not service.product_links():
            typer.echo("note: no products are linked across factories yet, so there is nothing to collapse "
                       "(link them in the Duplicates tab or with `ingest review import`)", err=True)
    if as_json:
        _print_json({"query": query, "filter": where, **({"collapse_linked": True} if collapse_linked else {}),
                     "hits": [{"point_id": h.point_id, "score": round(h.score, 6), "payload": h.payload,
                               **({"also_sold_as": [p.to_dict() for p in h.linked]} if collapse_linked else {})}
                              for h in hits]})
        return
    if not hits:
        typer.echo("no hits")
    for rank, hit in enumerate(hits, start=1):
        typer.echo(f"{rank:>3}. {hit.score:.4f}  {hit.factory:<16} {hit.product_id:<20} {hit.payload.get('photo_path')}"
                   + (f"  box={hit.payload['box']}" if hit.payload.get("box") else ""))
        if hit.linked:
            typer.echo("       also sold as " + ", ".join(
                p.name + ("" if p.score is None else f" ({p.score:.4f})") for p in hit.linked))


def _run_search(settings, service, text, avoid, weight, image, image_url, crop_id, like, dislike, strategy, where,
                top_k, min_score, whole, collapse=False):
    """The hits and a description of the query (the --json `query`) for `ingest search`'s options."""
    from core.search.query_mix import Term, terms

    if like or dislike:
        hits = service.refine(like, dislike, where=where, top_k=top_k, min_score=min_score, strategy=strategy,
                              collapse_linked=collapse)
        used = strategy or ("average_vector" if like else "best_score")
        return hits, {"like": like, "dislike": dislike, "strategy": used}
    if image is None and image_url is None and crop_id is None:  # words only
        if len(text) == 1 and not avoid:
            hits = service.search_text(text[0], where=where, top_k=top_k, min_score=min_score, collapse_linked=collapse)
            if hits.truncated:
                typer.echo(f"note: {hits.notice}", err=True)
            return hits, {"text": text[0], "truncated": hits.truncated}
        words = [Term(text[0], 1.0), *terms(text[1:], avoid, weight)]
        hits = service.search_words(words, where=where, top_k=top_k, min_score=min_score, collapse_linked=collapse)
        return hits, {"text": text[0], "words": _words_json(words[1:])}
    words = terms(text, avoid, weight)
    if crop_id is not None:
        hits = service.more_like_this(crop_id, where=where, top_k=top_k, min_score=min_score, words=words,
                                      collapse_linked=collapse)
        return hits, {"crop_id": crop_id, **({"words": _words_json(words)} if words else {})}
    if image_url is not None:
        from core.search.image_urls import UrlLimits, fetch_photo

        photo = fetch_photo(image_url, UrlLimits.from_settings(settings), settings.max_image_pixels,
                            settings.decode_max_side)
        source = {"image_url": image_url}
    else:
        from core.vision.crops import load_query_photo

        photo = load_query_photo(image, settings.max_image_pixels, settings.decode_max_side)
        source = {"image": str(image)}
    crop = service.query_crops(photo)[-1 if whole else 0]
    hits = service.search_image(crop.image, where=where, top_k=top_k, min_score=min_score, words=words,
                                collapse_linked=collapse)
    return hits, {**source, "region": crop.label, **({"words": _words_json(words)} if words else {})}


def _words_json(words) -> list[dict[str, Any]]:
    return [{"text": w.text, "weight": w.weight} for w in words]


@app.command()
def remove(
    factory: Annotated[Optional[str], typer.Option(help="Remove every crop of this factory.")] = None,
    path: Annotated[Optional[Path], typer.Option(help="Remove crops of this photo, or of all photos under this folder.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete crops by factory and/or photo path (asks first unless --yes)."""
    if factory is None and path is None:
        raise typer.BadParameter("give --factory and/or --path")
    settings = _settings(wait)
    with _user_errors(as_json), _open_app(settings, write=True) as opened:
        store, service = opened.store, opened.ingest
        # A removal killed midway is finished first; its factory may then be gone, which is
        # what the rerun asked for, not a mistake.
        recovered = 0 if dry_run else service.recover()
        if recovered:
            typer.echo(f"finished {recovered} interrupted write(s) of an earlier run", err=True)
        else:
            _check_factories(store, factory)
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


@app.command(name="eval")
def eval_command(
    queries: Annotated[Optional[Path], typer.Option(
        "--queries", help="CSV text,product_id[,factory]: text search quality too.", exists=True, dir_okay=False)] = None,
    pairs: Annotated[Optional[Path], typer.Option(
        "--pairs", help="CSV a,b[,same] of photo paths showing the same shoe: relevance instead of product ids.",
        exists=True, dir_okay=False)] = None,
    links: Annotated[bool, typer.Option(
        "--links", help="Relevance from the review's product links: a crop's relevant set includes the crops of "
                        "the products linked to its product in other factories; adds the cross-factory metrics.")] = False,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="Compare models (repeatable) on the same sample, in memory; the index is not changed.")] = None,
    sample: Annotated[int, typer.Option(min=2, help="With --model: crops to sample (whole products).")] = 500,
    background: Annotated[Optional[list[str]], typer.Option(
        "--background", help="With --model: none | rembg (repeatable): measure background removal.")] = None,
    factory: Annotated[Optional[list[str]], typer.Option("--factory", help="Only these factories (repeatable).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a markdown report here.")] = None,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Retrieval quality on your own catalogue: photos of one product should find each other."""
    from core.app import build_embedder
    from core.duplicates.service import load_items
    from core.quality.evaluate import compare_models, evaluate_vectors, read_pairs, read_queries
    from core.quality.metrics import markdown

    settings = _settings(wait)
    sections: list[str] = []
    output: dict[str, Any] = {}
    with _user_errors(as_json):
        text = read_queries(queries) if queries else []
        linked = read_pairs(pairs) if pairs else []
        if linked and model:
            raise typer.BadParameter("--pairs applies to the index; compare models by product ids", param_hint="--pairs")
        if links and (model or pairs):
            raise typer.BadParameter("--links applies to the index, with product ids as the rest of the relevance "
                                     "(leave out --model and --pairs)", param_hint="--links")
        product_links = _product_links(settings) if links else {}
        with _open_app(settings) as opened:
            store = opened.store
            _check_factories(store, factory)
            if background and not model:
                raise typer.BadParameter("--background compares variants: give --model too", param_hint="--background")
            if model:
                from core.vision.background import build_remover

                compared = compare_models(
                    # TEXT_MODEL was trained for CLIP_MODEL only: other models use their own text encoders.
                    store, model, lambda name: build_embedder(settings.model_copy(update={
                        "clip_model": name, "text_model": settings.text_model if name == settings.clip_model else ""})),
                    sample=sample, queries=text, max_pixels=settings.max_image_pixels,
                    removers=[build_remover(kind, settings.background_model) for kind in (background or ["none"])])
                output = {"sample_crops": compared["sample_crops"], "models": {}}
                for name, result in compared["models"].items():
                    evaluations = result.pop("_evaluations")
                    output["models"][name] = result
                    sections += [markdown(e, f"{name}: {kind} queries") for kind, e in evaluations.items()]
            else:
                if settings.qdrant_url:  # a server ranks each query's neighbours: no vectors held here
                    from core.quality.evaluate import evaluate_store

                    crops, evaluations = evaluate_store(store, factory, opened.embedder if text else None, text,
                                                        linked, product_links)
                else:
                    items = load_items(store, factory)
                    if len(items) == 0:
                        raise ShoeSearchError(f"Nothing indexed in {store.location} to evaluate.")
                    crops = len(items)
                    evaluations = evaluate_vectors(items, opened.embedder if text else None, text, linked)
                    if product_links:
                        from core.quality.evaluate import evaluate_links

                        evaluations.update(evaluate_links(items, product_links))
                output = {"index": store.location, "crops": crops,
                          **({"links": _links_summary(product_links)} if product_links else {}),
                          **{kind: e.to_dict() for kind, e in evaluations.items()}}
                titles = {"photo": "photo queries, linked products relevant" if product_links else "photo queries",
                          "cross_factory": "cross-factory queries: the linked products in other factories, the "
                                           "query's own product left out"}
                sections = [markdown(e, f"{titles.get(kind, kind + ' queries')} ({crops} crops)")
                            for kind, e in evaluations.items()]
    text_report = "\n".join(sections)
    if report:
        report.write_text("# Retrieval evaluation\n\n" + text_report)
    if as_json:
        _print_json(output)
    else:
        typer.echo(text_report)


def _product_links(settings: Settings) -> dict[str, list[str]]:
    """The review's product links ('factory/product' -> its link group); DecisionsError when none."""
    from core.app import decisions
    from core.duplicates.review import require_product_links

    return require_product_links(decisions(settings).load())


def _links_summary(links: dict[str, list[str]]) -> dict[str, int]:
    return {"groups": len({tuple(g) for g in links.values()}), "products": len(links)}


@app.command(name="tune")
def tune_command(
    dim: Annotated[int, typer.Option(min=8, max=4096, help="Size of the tuned vectors.")] = 128,
    loss: Annotated[str, typer.Option(help="mnr (multiple negatives) | triplet (batch-hard)")] = "mnr",
    epochs: Annotated[int, typer.Option(min=1, max=1000)] = 60,
    factory: Annotated[Optional[list[str]], typer.Option("--factory", help="Learn from these factories only.")] = None,
    links: Annotated[bool, typer.Option(
        "--links", help="Products linked across factories in the review are one label: their crops become "
                        "positive pairs for each other.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Head file (.npz).")] = None,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a projection head on the indexed crop vectors (labels: product ids; with --links,
    products linked across factories in the review count as one); reports
    validation mAP of raw CLIP versus the head on held-out products."""
    if loss not in ("mnr", "triplet"):
        raise typer.BadParameter("mnr or triplet", param_hint="--loss")
    from core.duplicates.service import load_items
    from core.quality.evaluate import item_labels
    from core.quality.tune import train_head

    settings = _settings(wait)
    with _user_errors(as_json):
        product_links = _product_links(settings) if links else {}
    with _user_errors(as_json), _open_app(settings) as opened:
        store = opened.store
        _check_factories(store, factory)
        info = store.info()
        items = load_items(store, factory)
        if info is None or len(items) == 0:
            raise ShoeSearchError(f"Nothing indexed in {store.location} to learn from.")
        labels, photos, _ = item_labels(items)
        if product_links:
            from core.quality.evaluate import labels_from_links

            if not any(label in product_links for label in labels):
                raise ShoeSearchError(f"none of the {len(product_links)} linked products is among the crops to "
                                      f"learn from (a --factory filter leaving out their factories?)")
            labels = labels_from_links(items, product_links)
        with _progress_bar(as_json) as (bar, task):
            head = train_head(items.vectors, labels, photos, items.ids, info.model, dim_out=dim, loss=loss,
                              epochs=epochs, progress=lambda epoch, val: bar.update(
                                  task, completed=100 * epoch / epochs, description=f"epoch {epoch} mAP {val:.3f}"))
        path = head.save(output or settings.data_dir / "heads" / f"{info.model}-{head.info.head_id}.npz")
    result = {"head": str(path), **head.info.metrics, "epochs_run": head.info.epochs_run,
              "best_epoch": head.info.best_epoch, "train_products": head.info.train_products,
              "val_products": head.info.val_products,
              **({"links": _links_summary(product_links)} if product_links else {})}
    if as_json:
        _print_json(result)
        return
    if product_links:
        summary = _links_summary(product_links)
        typer.echo(f"labels: product ids, {_n(summary['products'], 'linked product')} in "
                   f"{_n(summary['groups'], 'group')} counted as one product each")
    typer.echo(f"validation mAP on {head.info.val_products} held-out products: raw CLIP "
               f"{head.info.metrics['val_mAP_raw']:.3f} -> head {head.info.metrics['val_mAP_head']:.3f} "
               f"(best epoch {head.info.best_epoch} of {head.info.epochs_run})")
    typer.echo(f"saved {path}\nto use it: PROJECTION_HEAD={path} ingest reproject")


@app.command(name="reproject")
def reproject_command(wait: WaitOption = None, as_json: JsonFlag = False) -> None:
    """Fill PROJECTION_HEAD's collection from the indexed vectors (no model needed)."""
    settings = _settings(wait)
    with _user_errors(as_json), _open_app(settings, write=True) as opened:
        store, head = opened.store, opened.head_index
        if head is None:
            raise ShoeSearchError("Set PROJECTION_HEAD to a head file from `ingest tune` first.")
        count = head.sync_from(store)
        location = head.store.collection
    if as_json:
        _print_json({"projected": count, "collection": location})
    else:
        typer.echo(f"projected {count} crops into collection {location}")


@app.command(name="export")
def export_command(
    path: Annotated[Path, typer.Argument(help="File to write (gzip JSON lines), e.g. points.jsonl.gz.")],
    factory: Annotated[Optional[list[str]], typer.Option("--factory", help="Only these factories (repeatable).")] = None,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Write every point (vector + payload) to a file: a backup, or a move to another store."""
    from core.search.service import build_where
    from core.store.transfer import export_points

    settings = _settings(wait)
    with _user_errors(as_json), _open_app(settings) as opened:
        _check_factories(opened.store, factory)
        count = export_points(opened.store, path, build_where(factory))
    if as_json:
        _print_json({"exported": count, "path": str(path)})
    else:
        typer.echo(f"exported {count} points to {path}")


@app.command(name="import")
def import_command(
    path: Annotated[Path, typer.Argument(help="A file written by `ingest export`.", exists=True, dir_okay=False)],
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Upsert an export's points into the configured store (same ids: reruns add nothing)."""
    from core.store.transfer import import_points

    settings = _settings(wait)
    with _user_errors(as_json), _open_app(settings, write=True) as opened:
        count = import_points(opened.store, path)
        total = opened.store.count()
    if as_json:
        _print_json({"imported": count, "points": total, "store": settings.qdrant_url or str(settings.embedded_store_dir)})
    else:
        typer.echo(f"imported {count} points; the store now holds {total}")


@app.command(name="cluster")
def cluster_command(
    duplicate_threshold: Annotated[float, typer.Option(min=-1.0, max=1.0, help="Cosine for the duplicate tier.")] = 0.95,
    similar_threshold: Annotated[float, typer.Option(min=-1.0, max=1.0, help="Cosine for the similar tier.")] = 0.85,
    hash_distance: Annotated[int, typer.Option(
        min=-1, max=15, help="phash tier: crops whose 64-bit perceptual hashes differ in at most this many bits "
                             "(re-encoded, resized copies); -1: no phash tier.")] = 6,
    scope: Annotated[Scope, typer.Option(help="all | cross-factory | within-factory")] = Scope.ALL,
    factory: Annotated[Optional[list[str]], typer.Option("--factory", help="Only these factories (repeatable).")] = None,
    level: Annotated[Level, typer.Option(help="crop | product (a product pair scores its best crop pair)")] = Level.CROP,
    linkage: Annotated[Linkage, typer.Option(
        help="single (connected components) | complete (no chaining)")] = Linkage.SINGLE,
    representative: Annotated[str, typer.Option(help="medoid | largest | confidence | factory:NAME")] = "medoid",
    method: Annotated[Method, typer.Option(
        help="auto | exact | ann (bucket index, pairs scored exactly) | knn (the store's nearest neighbours, "
             "batched; a server's HNSW); auto: exact up to 300k crops, then knn against a server, ann "
             "otherwise")] = Method.AUTO,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path("cluster_report"),
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: json,csv,folders,collage")] = "json,csv",
    labels: Annotated[Optional[Path], typer.Argument(
        help="With --calibrate: LABELS.csv with a,b,same (default: the review decisions).",
        exists=True, dir_okay=False, metavar="LABELS.csv", show_default=False)] = None,
    calibrate_: Annotated[bool, typer.Option(
        "--calibrate", help="Score thresholds on labelled pairs instead of clustering: LABELS.csv if given, "
                            "else the review decisions (ingest review).")] = False,
    target_precision: Annotated[float, typer.Option(min=0.0, max=1.0, help="With --calibrate.")] = 0.95,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Group near-duplicates (identical / phash / duplicate / similar tiers) and write reports.

    Review decisions (ingest review) bind every run: pairs decided different never share a group."""
    if labels is not None and not calibrate_:
        raise typer.BadParameter("a labels file goes with --calibrate (ingest cluster --calibrate LABELS.csv)",
                                 param_hint="LABELS.csv")
    from core.domain.options import check_representative, parse_formats

    try:
        check_representative(representative)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--representative") from None
    try:
        chosen_formats = parse_formats(formats)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from None
    from core.duplicates.groups import ClusterSettings
    from core.duplicates.reports import write_reports

    settings = _settings(wait)
    with _user_errors(as_json):
        with _open_app(settings, write=True) as opened:
            _check_factories(opened.store, factory)
            if representative.startswith("factory:"):
                _check_factories(opened.store, representative.removeprefix("factory:"))
            service = opened.clusters
            if calibrate_:
                result = service.calibrate(labels, target_precision)
                _report_calibration(result, output, as_json)
                return
            options = ClusterSettings(duplicate_threshold, similar_threshold, scope, level, linkage, representative,
                                      hash_distance=None if hash_distance < 0 else hash_distance)
            with _progress_bar(as_json) as (bar, task):
                outcome = service.run(options, factories=factory, method=method,
                                      progress=lambda f, what: bar.update(task, completed=f * 100, description=what))
            write_reports(outcome, output, settings.data_dir, chosen_formats)
    summary = outcome.summary()
    if as_json:
        _print_json({**summary, "output": str(output)})
        return
    typer.echo(f"{summary['items']} crops clustered ({outcome.method}) in {sum(outcome.timings.values()):.1f}s -> {output}/")
    for tier, info in summary["tiers"].items():
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(info["status"].items()))
        reviewed = f", {info['reviewed']} reviewed" if info["reviewed"] and tier != "identical" else ""
        typer.echo(f"  {tier:<10} {info['groups']:>6} groups, {info['items_in_groups']:>7} crops, "
                   f"largest {info['largest']}{reviewed}" + (f" ({statuses})" if statuses else ""))


@contextlib.contextmanager
def _progress_bar(quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description:<18}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True, disable=quiet or not console.is_terminal) as bar:
        yield bar, bar.add_task("clustering", total=100)


def _report_calibration(result: dict[str, Any], output: Path, as_json: bool) -> None:
    """calibration.json and pr_curve.png under `output`, and a table."""
    from core.quality.plots import write_calibration

    write_calibration(result, output)
    curve = result["curve"]
    if as_json:
        _print_json({**result, "output": str(output)})
        return
    source = f" from {result['labels']}" if result.get("labels") else ""
    typer.echo(f"{result['pairs']} labelled pairs{source} ({result['positives']} same), "
               f"{len(result['unmatched'])} unmatched")
    typer.echo("threshold  precision  recall  f1")
    for r in curve[::5]:
        typer.echo(f"  {r['threshold']:.2f}      {r['precision']:.3f}    {r['recall']:.3f}  {r['f1']:.3f}")
    chosen = result["threshold_for_target"]
    typer.echo(f"threshold for precision >= {result['target_precision']}: "
               + (f"{chosen:.2f}" if chosen is not None else "none reaches it"))
    typer.echo(f"-> {output}/calibration.json, {output}/pr_curve.png")


@app.command(name="migrate")
def migrate_command(
    to: Annotated[str, typer.Option("--to", metavar="URL", help="The Qdrant server or cluster node to copy into, "
                                    "e.g. http://localhost:6333.")],
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", help="The target's API key (default: QDRANT_API_KEY).")] = None,
    collection: Annotated[Optional[str], typer.Option(
        "--collection",
        help="Target collection (default: QDRANT_COLLECTION); QDRANT_SHARD_NUMBER etc. lay it out.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=10_000, help="Points per upsert.")] = 256,
    sample: Annotated[int, typer.Option(
        min=0, max=100_000, help="Points read back to compare vectors and payloads.")] = 64,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Copy the index to a Qdrant server or cluster without re-embedding: vectors, payloads, the
    model record and group ids; verified by counts and a sample. Rerun to resume."""
    from core.app import open_target_store
    from core.store.migrate import migrate

    settings = _settings(wait)
    with _user_errors(as_json), _open_app(settings) as opened:
        source = opened.store
        with contextlib.closing(open_target_store(settings, to, api_key, collection)) as target, \
                _progress_bar(as_json) as (bar, task):
            bar.update(task, description="migrating")
            report = migrate(source, target, settings.data_dir, to, batch_size=batch_size, sample=sample,
                             progress=lambda done, total: bar.update(task, completed=100 * done / max(total, 1)))
    if as_json:
        _print_json(report.to_dict())
        return
    typer.echo(f"migrated {report.source_points} points from {report.source} to {report.target} "
               f"(collection {report.collection}): {report.copied} copied, {report.already_there} already there"
               + (" (resumed)" if report.resumed else "") + f" in {report.seconds:.1f}s")
    typer.echo(f"verified: {report.target_points} points in the target = {report.source_points} in the source; "
               f"{report.sample} sampled vectors, min cosine {report.min_sample_cosine or 0:.6f}, same payloads; "
               f"model {report.model}")
    typer.echo(f"group ids: {report.group_ids}")


# --------------------------------------------------------------------------- review decisions

review_app = typer.Typer(
    help="Duplicate review decisions (same shoe / not the same / products linked across factories), kept "
         "with the index by photo content; clustering honours them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(review_app, name="review")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _review_decisions(settings: Settings):
    from core.app import decisions

    return decisions(settings)


@review_app.command(name="status")
def review_status(as_json: JsonFlag = False) -> None:
    """How many decisions are stored, and how much of the last clustering is reviewed."""
    from core.duplicates.review import product_groups
    from core.duplicates.service import last_clustering

    settings = _settings()
    decisions = _review_decisions(settings)
    with _user_errors(as_json):
        state = decisions.load()
        progress = last_clustering(settings.data_dir, settings.qdrant_collection)
    counts = state.counts()
    linked = product_groups(state)
    data = {"file": str(decisions.path), **counts, "product_groups": len(linked),
            "last_clustering": progress.to_dict()}
    if as_json:
        _print_json(data)
        return
    typer.echo(f"decisions: {decisions.path}" + ("" if decisions.path.exists() else " (none yet)"))
    kinds = ", ".join(f"{kind} {c['same']} same / {c['different']} different" for kind, c in counts["by_kind"].items())
    typer.echo(f"  {counts['same']} same, {counts['different']} different" + (f" ({kinds})" if kinds else ""))
    typer.echo(f"  {_n(counts['product_links'], 'product link')} in {_n(len(linked), 'linked product group')}, "
               f"{_n(counts['representatives'], 'representative')} chosen")
    if counts["last_decided_at"]:
        typer.echo(f"  last decision {counts['last_decided_at']}")
    if progress.tiers:
        typer.echo(f"last clustering ({progress.saved_at}):")
        for tier in REVIEW_ORDER:
            if tier in progress.tiers:
                c = data["last_clustering"]["tiers"][tier]
                typer.echo(f"  {tier:<10} {c['groups']:>6} groups, {c['reviewed']:>6} reviewed, {c['to_review']:>6} to review")
    else:
        typer.echo("no clustering yet: ingest cluster, or Find duplicates in the UI")


@review_app.command(name="export")
def review_export(
    path: Annotated[Path, typer.Argument(help="File to write: .csv (a,b,decision,...) or .json.", dir_okay=False)],
    products: Annotated[bool, typer.Option(
        "--products", help="Write the product mapping instead: products linked across factories, with the best "
                           "crop-pair similarity and when it was decided.")] = False,
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the decisions (photo paths as they are indexed now, plus content hashes) or the product mapping."""
    from core.duplicates.review import ContentIndex, export_rows, product_mapping, write_export, write_product_mapping
    from core.duplicates.service import load_items

    settings = _settings(wait)
    decisions = _review_decisions(settings)
    with _user_errors(as_json):
        state = decisions.load()
        with _open_app(settings) as opened:
            store = opened.store
            if products:
                items = load_items(store)
                mapping = product_mapping(state, opened.clusters.best_similarity(items))
            else:
                rows = export_rows(state, ContentIndex(p.payload for p in store.scroll(batch_size=1024)))
        if products:
            write_product_mapping(path, mapping)
            result = {"path": str(path), "product_groups": len(mapping["groups"]),
                      "links": sum(len(g["links"]) for g in mapping["groups"])}
        else:
            write_export(path, rows, settings.qdrant_collection)
            result = {"path": str(path), "decisions": sum(r["decision"] != "representative" for r in rows),
                      "representatives": sum(r["decision"] == "representative" for r in rows)}
    if as_json:
        _print_json(result)
    elif products:
        typer.echo(f"wrote {_n(result['links'], 'product link')} in {_n(result['product_groups'], 'group')} to {path}")
    else:
        typer.echo(f"wrote {result['decisions']} decisions and {result['representatives']} representatives to {path}")


@review_app.command(name="import")
def review_import(
    path: Annotated[Path, typer.Argument(
        help="CSV with a,b,decision (a, b: photo paths or factory/product_id; decision: same or different), or "
             "a file from `ingest review export`.", exists=True, dir_okay=False)],
    wait: WaitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Add decisions from a file; a later decision on a pair replaces the earlier one.

    A malformed row refuses the whole file; rows naming photos or products found neither in the index nor
    on disk are listed and skipped (exit 1)."""
    from core.duplicates.review import ContentIndex, read_import

    settings = _settings(wait)
    decisions = _review_decisions(settings)
    with _user_errors(as_json):
        decisions.load()  # a damaged decisions file stops before the store is opened
        with _open_app(settings) as opened:
            index = ContentIndex(p.payload for p in opened.store.scroll(batch_size=1024))
        imported = read_import(path, index)
        changed = decisions.merge(imported.state)
    result = {"path": str(path), "rows": imported.rows, "decisions": len(imported.state.pairs), "changed": changed,
              "representatives": len(imported.state.representatives), "unmatched": imported.unmatched,
              "file": str(decisions.path)}
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"imported {result['decisions']} decisions ({changed} new or changed) and "
                   f"{result['representatives']} representatives from {path}")
        for line in imported.unmatched:
            typer.echo(f"  skipped {line}: not an indexed photo, a photo on disk or an indexed factory/product_id",
                       err=True)
    if imported.unmatched:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry convenience
    app(prog_name="ingest")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
