"""The Gradio layout. Behaviour lives in `handlers.py`; this file only wires events to it.

Run: `search-ui` (or `python -m search_ui`). Named API endpoints: /search_text, /search_image,
/more_like_this, /factories (see the README for a gradio_client example).
"""

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

    from core.settings import Settings
    from search_ui.handlers import Handlers

log = logging.getLogger("search_ui")

TITLE = "Shoe catalogue search"
# No `from __future__ import annotations` here: Gradio reads the `gr.SelectData` annotations
# of event functions at runtime to inject the event, and cannot resolve them from strings.


def _photo_input_class():
    import gradio as gr

    class PhotoInput(gr.Image):
        """A gr.Image that hands the uploaded file to our decoder untouched.

        gr.Image opens every upload with PIL first, so a broken file fails inside Gradio
        with no message for the user; our decoder gives the reason and applies the limits.
        """

        def preprocess(self, payload):
            if payload is None or (payload.url and payload.url.startswith("data:")):
                try:
                    return super().preprocess(payload)
                except Exception:
                    return None
            return str(payload.path)

    return PhotoInput


def build_app(handlers: "Handlers") -> "gr.Blocks":
    """The whole page: Search tab (text / photo / more-like-this) and Catalogue tab."""
    import gradio as gr

    PhotoInput = _photo_input_class()

    def outputs_of(results):
        return results.gallery, results.hits, results.status, results.hits

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nFind a shoe by photo or by words, across every factory's catalogue.")
        hits_state = gr.State([])
        selected_id = gr.State("")
        with gr.Tab("Search"):
            with gr.Row():
                with gr.Column(scale=2):
                    with gr.Tab("By text"):
                        text = gr.Textbox(label="Describe the shoe", placeholder="white leather high-top sneaker",
                                          elem_id="query-text")
                        text_button = gr.Button("Search", variant="primary", elem_id="search-text-button")
                    with gr.Tab("By photo"):
                        # filepath, not pil: our decoder applies the pixel limit, EXIF and clear errors.
                        photo = PhotoInput(label="Query photo (upload, paste or drop)", type="filepath",
                                         sources=["upload", "clipboard"], elem_id="query-photo")
                        detect_note = gr.Markdown()
                        regions = gr.Gallery(label="Detected shoes: click the one to search with", columns=4,
                                             height=160, allow_preview=False, elem_id="query-regions")
                        region = gr.Number(value=0, precision=0, visible=False)
                        photo_button = gr.Button("Search with this photo", variant="primary")
                with gr.Column(scale=1):
                    # A dropdown, not checkboxes: API callers may name factories added after start-up.
                    factories = gr.Dropdown(label="Factories (crops indexed)", choices=handlers.factory_choices(),
                                            multiselect=True, allow_custom_value=True, elem_id="factories")
                    with gr.Row():
                        product = gr.Textbox(label="Product id", placeholder="SKU123", scale=2)
                        product_exact = gr.Checkbox(label="exact", value=False, scale=1)
                    min_score = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Minimum similarity (0 = off)")
                    top_k = gr.Slider(1, 100, value=24, step=1, label="Results")
                    one_per_product = gr.Checkbox(label="One result per product (best crop)", value=False)
                    group = gr.Textbox(label="Duplicate group id (from the Duplicates tab)", value="",
                                       placeholder="dup-… or sim-…", elem_id="group-filter")
            status = gr.Markdown(elem_id="status")
            results = gr.Gallery(label="Results", columns=6, height="auto", allow_preview=False, elem_id="results")
            with gr.Row():
                with gr.Column(scale=2):
                    detail_photo = gr.Image(label="Selected: full photo, box in red", interactive=False)
                with gr.Column(scale=1):
                    more_button = gr.Button("More like this", elem_id="more-like-this")
                    detail = gr.JSON(label="Payload")
            with gr.Accordion("Raw results (JSON)", open=False):
                raw = gr.JSON(label="Hits")

        with gr.Tab("Duplicates"):
            with gr.Row():
                dup_threshold = gr.Slider(0.5, 1.0, value=0.95, step=0.005, label="Duplicate: cosine ≥")
                sim_threshold = gr.Slider(0.5, 1.0, value=0.85, step=0.005, label="Similar: cosine ≥")
            with gr.Row():
                scope = gr.Radio(["all", "cross-factory", "within-factory"], value="all", label="Pairs")
                level = gr.Radio(["crop", "product"], value="crop", label="Level")
                linkage = gr.Radio(["single", "complete"], value="single",
                                   label="Linkage (complete: no chaining)")
            dup_factories = gr.Dropdown(label="Only these factories (empty: all)", choices=handlers.factory_choices(),
                                        multiselect=True, allow_custom_value=True)
            dup_button = gr.Button("Find duplicates", variant="primary", elem_id="find-duplicates")
            dup_status = gr.Markdown(elem_id="duplicates-status")
            with gr.Row():
                with gr.Column(scale=2):
                    group_list = gr.Gallery(label="Groups, largest first (click one)", columns=6, height=420,
                                            allow_preview=False, elem_id="groups")
                    group_view = gr.Gallery(label="Members of the selected group", columns=6, height=300,
                                            allow_preview=False, elem_id="group-members")
                    group_search = gr.Button("Search within this group")
                with gr.Column(scale=1):
                    heatmap = gr.Image(label="Factory × factory: shared groups", interactive=False)
                    reports = gr.File(label="Report (JSON, CSV)", file_count="multiple", interactive=False)
            groups_state = gr.State([])
            selected_group = gr.State("")

        with gr.Tab("Catalogue"):
            overview = gr.Markdown()
            gr.Markdown("### Add photos\nPhotos (or a .zip with product folders) for one factory; "
                        "they are stored under DATA_DIR/uploads and indexed.")
            upload_factory = gr.Textbox(label="Factory", placeholder="factory_a")
            uploads = gr.File(label="Photos or .zip", file_count="multiple",
                              file_types=[".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".zip"])
            upload_button = gr.Button("Add to the index", variant="primary")
            upload_report = gr.Markdown()

        filters = [factories, product, product_exact, min_score, top_k, one_per_product, group]
        shown = [results, hits_state, status, raw]

        def refresh_filters():
            return gr.Dropdown(choices=handlers.factory_choices()), handlers.catalogue_markdown()

        demo.load(refresh_filters, outputs=[factories, overview], api_name="factories")

        def by_text(q, *f):
            return outputs_of(handlers.search_text(q, *f))

        text_button.click(by_text, [text, *filters], shown, api_name="search_text")
        text.submit(by_text, [text, *filters], shown, api_visibility="private")

        def on_photo(image):
            items, note = handlers.detect(image)
            return items, note, 0

        photo.upload(on_photo, [photo], [regions, detect_note, region], api_visibility="private")

        def pick_region(evt: gr.SelectData):
            return evt.index

        regions.select(pick_region, None, region, api_visibility="private")

        def by_photo(image, index, *f):
            return outputs_of(handlers.search_image(image, index, *f))

        photo_button.click(by_photo, [photo, region, *filters], shown, api_name="search_image")

        def select_hit(hits, evt: gr.SelectData):
            return handlers.hit_detail(hits, evt.index)

        results.select(select_hit, [hits_state], [detail_photo, detail, selected_id], api_visibility="private")

        def more(point_id, *f):
            return outputs_of(handlers.more_like_this(point_id, *f))

        more_button.click(more, [selected_id, *filters], shown, api_visibility="private")
        # The same action by point id, for scripts.
        more_api_id = gr.Textbox(visible=False)
        more_api_button = gr.Button(visible=False)
        more_api_button.click(more, [more_api_id, *filters], shown, api_name="more_like_this")

        def find_duplicates(dup_t, sim_t, scope_, chosen, level_, linkage_, progress=gr.Progress()):
            found = handlers.find_duplicates(dup_t, sim_t, scope_, chosen, level_, linkage_,
                                             progress=lambda fraction, what: progress(fraction, desc=what))
            return found.status, found.heatmap, found.gallery, found.groups, found.files or None, [], ""

        dup_button.click(find_duplicates, [dup_threshold, sim_threshold, scope, dup_factories, level, linkage],
                         [dup_status, heatmap, group_list, groups_state, reports, group_view, selected_group],
                         api_visibility="private", concurrency_limit=1)

        def pick_group(groups, evt: gr.SelectData):
            return handlers.group_members(groups, evt.index)

        group_list.select(pick_group, [groups_state], [group_view, selected_group], api_visibility="private")
        group_search.click(lambda group_id: group_id, [selected_group], [group], api_visibility="private")

        def add(files, factory, progress=gr.Progress()):
            report = handlers.add_photos(files, factory, progress=lambda done, total: progress((done, total)))
            choices, overview_text = refresh_filters()
            return report, choices, overview_text

        upload_button.click(add, [uploads, upload_factory], [upload_report, factories, overview],
                            api_visibility="private", concurrency_limit=1)
    return demo


def create_handlers(settings: "Settings", preload: bool = True) -> "Handlers":
    """Open the store and the models once; every request shares them."""
    from core.search_service import SearchService
    from core.wiring import ingest_service, open_head_index, open_store
    from search_ui.handlers import Handlers

    store = open_store(settings)
    head = open_head_index(settings, store)
    ingest = ingest_service(settings, store, head)
    search = SearchService(store, ingest.embedder, ingest.detector, crop_margin=settings.crop_margin, head_index=head,
                           background_remover=ingest.background_remover)
    if preload:  # both models at once: start-up is mostly loading them
        from concurrent.futures import ThreadPoolExecutor

        loaders = [ingest.embedder.load] + [part.load for part in (ingest.detector, ingest.background_remover)
                                            if hasattr(part, "load")]
        with ThreadPoolExecutor(max_workers=len(loaders)) as pool:
            for future in [pool.submit(load) for load in loaders]:
                future.result()
    return Handlers(settings, store, search, ingest)


def launch(settings: "Settings", handlers: "Handlers", block: bool = True):
    """Serve the app on UI_HOST:UI_PORT with the configured login and upload limit."""
    demo = build_app(handlers)
    auth = (settings.ui_username, settings.ui_password) if settings.ui_username and settings.ui_password else None
    if settings.ui_host not in {"127.0.0.1", "localhost", "::1"} and auth is None:
        log.warning("search UI bound to %s without a login: anyone on the network can use it. "
                    "Set UI_USERNAME and UI_PASSWORD.", settings.ui_host)
    demo.queue(default_concurrency_limit=8)
    demo.launch(
        server_name=settings.ui_host,
        server_port=settings.ui_port,
        auth=auth,
        max_file_size=f"{settings.ui_max_upload_mb}mb",
        allowed_paths=[str(settings.thumbnails_dir.resolve()), str((settings.data_dir / "reports").resolve())],
        prevent_thread_lock=not block,
        quiet=not block,
        footer_links=["api"],
    )
    return demo


def main() -> None:
    """Console entry point `search-ui`."""
    from core.errors import ShoeSearchError
    from core.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    try:
        handlers = create_handlers(settings)
    except ShoeSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    try:
        launch(settings, handlers)
    finally:
        handlers.store.close()
        if handlers.search.head_index is not None:
            handlers.search.head_index.store.close()


if __name__ == "__main__":  # pragma: no cover
    main()
