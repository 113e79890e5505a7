"""The Gradio layout. Behaviour lives in `handlers.py`; this file only wires events to it.

Run: `search-ui` (or `python -m search_ui`). Named API endpoints: /search_text, /search_image,
/more_like_this, /refine, /factories (see the README for a gradio_client example). They have
hidden inputs of their own, so their parameters and defaults do not follow the page's controls.

Only stock Gradio components are used: a subclass of one (say `gr.Image`) makes Gradio treat it
as a custom component whose front-end bundle does not exist, and the browser shows nothing.
Uploads reach our own decoder through `preprocess=False` instead (Gradio still checks that the
file lies in its upload cache), so a broken photo gets our message, not a Gradio error.
"""

import base64
import binascii
import logging
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr

    from core.app import App
    from core.settings import Settings
    from search_ui.handlers import Handlers

log = logging.getLogger("search_ui")

TITLE = "Shoe catalogue search"
# No `from __future__ import annotations` here: Gradio reads the `gr.SelectData` annotations
# of event functions at runtime to inject the event, and cannot resolve them from strings.

# Captions wrap instead of being cut off; the result detail reads as a card; the results gallery
# grows with its rows (Gradio caps an auto-height gallery at 55% of the window, hiding results
# behind a scroll box of its own).
CSS = """
#results .fixed-height { max-height: none !important; }
#results .caption-label, #groups .caption-label, #group-members .caption-label {
    white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
    max-width: 100% !important; line-height: 1.25; font-size: 0.8rem; }
#detail-card table { font-size: 0.9rem; }
#detail-card td:first-child { white-space: nowrap; font-weight: 600; padding-right: 1em; }
#detail-card td { word-break: break-all; }
"""

SCROLL_TO_DETAIL = "() => { document.getElementById('detail')?.scrollIntoView({block: 'start'}); }"
# An event's `js` runs first and its return value replaces the inputs: these hand them on.
SCROLL_TO_RESULTS = "(...inputs) => { document.getElementById('status')?.scrollIntoView({block: 'start'}); return inputs; }"
SCROLL_TO_QUERY = "(...inputs) => { document.getElementById('query-tabs')?.scrollIntoView({block: 'start'}); return inputs; }"

# Installed once, when the Duplicates tab is first opened: a review key clicks its button when that
# button is on screen and the focus is not in a text field.
REVIEW_KEYS = """() => {
  if (window.__reviewKeys) return;
  window.__reviewKeys = true;
  const buttons = {c: 'confirm-group', x: 'reject-member', r: 'make-representative', p: 'link-products',
                   n: 'next-group'};
  document.addEventListener('keydown', (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    if (target && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName))) return;
    const id = buttons[event.key.toLowerCase()];
    const button = id && document.getElementById(id);
    if (!button || button.offsetParent === null || button.disabled) return;
    event.preventDefault();
    button.click();
  });
}"""


# The Args every search endpoint shares, filled into each one's docstring (Gradio reads each
# function's own docstring for its API page).
SEARCH_DOC = {
    "filters": """factories: only these factories (empty: all)
product: product id filter ("" = none); a substring unless exact
exact: the product id must equal `product`
min_score: leave out results below this cosine similarity (0 = off)
top_k: how many results (1-200)
one_per_product: keep only the best crop of each product (captioned "+n more crops")
group: only crops of this duplicate group id ("" = none)""",
    "collapse_linked": "collapse_linked: one result per group of products linked across factories (also_sold_as: the others)",
    "returns": """Returns:
    gallery (thumbnail, caption), status line, hits (point_id, score, payload)""",
}


def search_endpoint_doc(fn):
    """`fn` with each `{name}` line of its docstring replaced by SEARCH_DOC[name], at that line's indent."""
    lines = []
    for line in fn.__doc__.split("\n"):
        key = line.strip()
        if key.startswith("{") and key.endswith("}") and key[1:-1] in SEARCH_DOC:
            indent = line[:len(line) - len(line.lstrip())]
            lines += [indent + part for part in SEARCH_DOC[key[1:-1]].split("\n")]
        else:
            lines.append(line)
    fn.__doc__ = "\n".join(lines)
    return fn


def upload_path(payload: Any, max_bytes: int) -> str | None:
    """The local file behind an image input's raw payload (a FileData dict, a path or a data: URL)."""
    if payload is None:
        return None
    if isinstance(payload, (str, Path)):
        return str(payload)
    url, path = payload.get("url") or "", payload.get("path")
    if url.startswith("data:"):  # a pasted image sent inline
        try:
            data = base64.b64decode(url.split(",", 1)[1], validate=False)
        except (IndexError, binascii.Error):
            data = b""
        if len(data) > max_bytes:
            data = b""  # our decoder then says it is not an image; nothing large is written
        with tempfile.NamedTemporaryFile(prefix="pasted-", suffix=".img", delete=False) as out:
            out.write(data)
        return out.name
    return str(path) if path else None


def build_app(handlers: "Handlers") -> "gr.Blocks":
    """The whole page: Search (text / photo / more-like-this), Duplicates and Catalogue tabs."""
    import gradio as gr

    from core.domain.options import Level, Linkage, Scope, choices

    max_upload = handlers.settings.ui_max_upload_mb * 1024 * 1024

    def outputs_of(results):
        return results.gallery, results.hits, results.status, results.hits

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nFind a shoe by photo or by words, across every factory's catalogue.")
        hits_state = gr.State([])
        selected_id = gr.State("")
        with gr.Tabs() as tabs:
            with gr.Tab("Search", id="search") as search_tab:
                with gr.Row():
                    with gr.Column(scale=2), gr.Tabs(elem_id="query-tabs") as query_tabs:
                        with gr.Tab("By text", id="by-text"):
                            text = gr.Textbox(label="Describe the shoe", placeholder="white leather high-top sneaker",
                                              elem_id="query-text")
                            text_button = gr.Button("Search", variant="primary", elem_id="search-text-button")
                        with gr.Tab("By photo", id="by-photo", elem_id="by-photo-tab"):
                            # format="png": a photo fetched by URL is shown (and searched again) without a lossy copy
                            photo = gr.Image(label="Query photo: upload, drop or paste", type="filepath",
                                             sources=["upload", "clipboard"], elem_id="query-photo", height=260,
                                             format="png")
                            with gr.Row(visible=handlers.settings.image_urls):
                                image_url = gr.Textbox(label="…or the photo's web address", scale=4,
                                                       placeholder="https://example.com/shoe.jpg", elem_id="image-url")
                                url_button = gr.Button("Fetch and search", scale=1, elem_id="fetch-url")
                            detect_note = gr.Markdown(elem_id="detect-note")
                            regions = gr.Gallery(label="Detected shoes: click the one to search with", columns=5,
                                                 height=170, allow_preview=False, elem_id="query-regions",
                                                 object_fit="contain")
                            region = gr.Number(value=0, precision=0, visible=False)
                            crop_query = gr.State("")  # an indexed crop searched instead of the photo
                            with gr.Row():
                                words_add = gr.Textbox(label="…but (words to add)", placeholder="red, patent leather",
                                                       elem_id="words-add", scale=2)
                                words_avoid = gr.Textbox(label="…not (words to avoid)", placeholder="suede",
                                                         elem_id="words-avoid", scale=2)
                                words_weight = gr.Slider(0.0, 3.0, value=1.0, step=0.05, scale=2, elem_id="words-weight",
                                                         label="Weight of each word (the photo weighs 1)")
                            photo_button = gr.Button("Search with this photo", variant="primary",
                                                     elem_id="search-photo-button")
                    with gr.Column(scale=1):
                        # A dropdown, not checkboxes: API callers may name factories added after start-up.
                        factories = gr.Dropdown(label="Factories (crops indexed)",
                                                choices=[], multiselect=True,
                                                allow_custom_value=True, elem_id="factories")
                        with gr.Row():
                            product = gr.Textbox(label="Product id", value="", placeholder="SKU123", scale=2,
                                                 elem_id="product-filter")
                            product_exact = gr.Checkbox(label="exact", value=False, scale=1)
                        min_score = gr.Slider(0.0, 1.0, value=0.0, step=0.01,
                                              label="Minimum similarity (0 = off)")
                        top_k = gr.Slider(1, 100, value=24, step=1, label="Results", elem_id="top-k")
                        one_per_product = gr.Checkbox(label="One result per product (its best crop; the caption "
                                                            "counts its other crops)", value=True,
                                                      elem_id="one-per-product")
                        collapse_linked = gr.Checkbox(
                            label="One result per linked product (the same shoe linked across factories in the "
                                  "Duplicates tab: its best crop, captioned “also sold as …”)",
                            value=False, elem_id="collapse-linked")
                        group = gr.Textbox(label="Duplicate group id (from the Duplicates tab)", value="",
                                           placeholder="dup-… or sim-…", elem_id="group-filter")
                status = gr.Markdown(elem_id="status")
                results = gr.Gallery(label="Results (click one for its details)", columns=4, height="auto",
                                     allow_preview=False, elem_id="results", object_fit="contain")
                with gr.Row(elem_id="detail"):
                    with gr.Column(scale=3):
                        detail_photo = gr.Image(label="Selected: the full photo, the crop boxed in red",
                                                interactive=False, elem_id="detail-photo", height=420)
                    with gr.Column(scale=2):
                        detail = gr.Markdown("*Click a result to see its details here.*", elem_id="detail-card")
                        with gr.Row():
                            more_button = gr.Button("More like this", elem_id="more-like-this")
                            use_crop_button = gr.Button("Search with it + words", elem_id="use-crop")
                        with gr.Row():
                            like_button = gr.Button("👍 Like", elem_id="like-button")
                            dislike_button = gr.Button("👎 Dislike", elem_id="dislike-button")
                        liked = gr.Dropdown(label="👍 Liked", choices=[], value=[], multiselect=True,
                                            allow_custom_value=True, elem_id="liked")
                        disliked = gr.Dropdown(label="👎 Disliked", choices=[], value=[], multiselect=True,
                                               allow_custom_value=True, elem_id="disliked")
                        with gr.Row():
                            refine_button = gr.Button("Refine", variant="primary", elem_id="refine-button")
                            clear_button = gr.Button("Clear likes", elem_id="clear-feedback")
                        feedback_note = gr.Markdown("*Like or dislike results, then **Refine**: crops like the "
                                                    "liked ones and unlike the disliked ones.*",
                                                    elem_id="feedback-note")
                        labels_state = gr.State({})
                with gr.Accordion("Raw results (JSON)", open=False):
                    raw = gr.JSON(label="Hits", elem_id="raw-hits")

            with gr.Tab("Duplicates", id="duplicates") as duplicates_tab:
                with gr.Row():
                    dup_threshold = gr.Slider(0.5, 1.0, value=0.95, step=0.005, label="Duplicate: cosine ≥",
                                              elem_id="dup-threshold")
                    sim_threshold = gr.Slider(0.5, 1.0, value=0.85, step=0.005, label="Similar: cosine ≥",
                                              elem_id="sim-threshold")
                with gr.Row():
                    scope = gr.Radio(choices(Scope), value=Scope.ALL.value, label="Pairs")
                    level = gr.Radio(choices(Level), value=Level.CROP.value, label="Level")
                    linkage = gr.Radio(choices(Linkage), value=Linkage.SINGLE.value,
                                       label="Linkage (complete: no chaining)")
                dup_factories = gr.Dropdown(label="Only these factories (empty: all)",
                                            choices=[], multiselect=True,
                                            allow_custom_value=True, elem_id="dup-factories")
                dup_button = gr.Button("Find duplicates", variant="primary", elem_id="find-duplicates")
                dup_status = gr.Markdown(elem_id="duplicates-status")
                with gr.Row():
                    with gr.Column(scale=2):
                        review_count = gr.Markdown(elem_id="review-count")
                        group_list = gr.Gallery(label="Groups: to review first, cross-factory first, then largest "
                                                      "(click one)", columns=5, height=420,
                                                allow_preview=False, elem_id="groups")
                        group_view = gr.Gallery(label="Members of the selected group (factory · product · "
                                                      "similarity to the representative): click one to reject it "
                                                      "or make it representative",
                                                columns=5, height=320, allow_preview=False, elem_id="group-members")
                        with gr.Row(elem_id="review-buttons"):
                            confirm_button = gr.Button("Same shoe (c)", variant="primary", size="sm",
                                                       elem_id="confirm-group")
                            reject_button = gr.Button("Not the same (x)", variant="stop", size="sm",
                                                      elem_id="reject-member")
                            representative_button = gr.Button("Make representative (r)", size="sm",
                                                              elem_id="make-representative")
                            link_button = gr.Button("Same product across factories (p)", size="sm", min_width=220,
                                                    elem_id="link-products")
                            next_button = gr.Button("Next group (n)", size="sm", elem_id="next-group")
                        review_status = gr.Markdown(elem_id="review-status")
                        group_search = gr.Button("Search within this group", elem_id="search-group")
                    with gr.Column(scale=1):
                        gr.Markdown("**Factories sharing groups**: each cell counts the groups holding both "
                                    "factories; the diagonal counts all groups holding that factory.")
                        heatmap = gr.Image(show_label=False, interactive=False, elem_id="heatmap")
                        reports = gr.File(label="Report (JSON, CSV)", file_count="multiple", interactive=False)
                groups_state = gr.State([])
                selected_group = gr.State("")
                selected_member = gr.State(None)

            with gr.Tab("Catalogue", id="catalogue") as catalogue_tab:
                overview = gr.Markdown(elem_id="catalogue-overview")
                gr.Markdown("### Add photos\nPhotos, or a .zip with one folder per product (`zip -r acme.zip acme/` "
                            "works), for one factory; they are stored under DATA_DIR/uploads and indexed.")
                upload_factory = gr.Textbox(label="Factory", placeholder="factory_a", elem_id="upload-factory")
                uploads = gr.File(label="Photos or .zip", file_count="multiple", elem_id="uploads",
                                  file_types=[".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                                              ".zip"])
                upload_button = gr.Button("Add to the index", variant="primary", elem_id="upload-button")
                upload_report = gr.Markdown(elem_id="upload-report")

        filters = [factories, product, product_exact, min_score, top_k, one_per_product, group]
        shown = [results, hits_state, status, raw]

        def refresh_filters():
            choices = handlers.factory_choices()
            return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices), handlers.catalogue_markdown()

        refreshed = [factories, dup_factories, overview]
        # The page's initial config holds nothing of the index (a login page embeds it): factory
        # names and counts arrive with this first event, which needs the login.
        demo.load(refresh_filters, outputs=refreshed, api_visibility="private")

        def models_note():
            loading = getattr(handlers, "models_loading", None)  # set by `preload_models`
            if loading is not None and not loading.done():
                return "⏳ Loading the models: a search started now waits for them (a few seconds)."
            return ""

        demo.load(models_note, outputs=status, api_visibility="private")
        # Factories added from the CLI or another tab show up when a tab is opened, no restart needed.
        for tab in (search_tab, duplicates_tab, catalogue_tab):
            tab.select(refresh_filters, outputs=refreshed, api_visibility="private")
        # ... and when a factory list is opened, on whichever tab.
        def refresh_choices():
            return gr.Dropdown(choices=handlers.factory_choices())

        for dropdown in (factories, dup_factories):
            dropdown.focus(refresh_choices, outputs=dropdown, api_visibility="private", queue=False)

        def list_factories():
            """The indexed factories with their crop counts.

            Returns:
                A list of [label, factory] pairs, e.g. ["factory_a (18)", "factory_a"].
            """
            return [list(choice) for choice in handlers.factory_choices()]

        gr.Button(visible=False).click(list_factories, None, gr.JSON(visible=False), api_name="factories")

        # The named API has hidden inputs of its own: its defaults (one_per_product=False, words
        # weight 1) stay what scripts were told, whatever the page's controls start at.
        api_filters = [
            gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True, visible=False,
                        label="factories"),
            gr.Textbox("", visible=False, label="product"), gr.Checkbox(False, visible=False, label="exact"),
            gr.Number(0.0, visible=False, label="min_score"), gr.Number(24, precision=0, visible=False, label="top_k"),
            gr.Checkbox(False, visible=False, label="one_per_product"), gr.Textbox("", visible=False, label="group")]
        api_words = [gr.Textbox("", visible=False, label="text"), gr.Number(1.0, visible=False, label="text_weight"),
                     gr.Textbox("", visible=False, label="not_text")]
        # Last in every endpoint's inputs, so that positional callers of the older ones are unchanged.
        api_collapse = gr.Checkbox(False, visible=False, label="collapse_linked")
        api_shown = [gr.Gallery(visible=False), gr.State([]), gr.Markdown(visible=False), gr.JSON(visible=False)]

        @search_endpoint_doc
        def search_text(query: str, factories: list[str] | None = None, product: str = "", exact: bool = False,
                        min_score: float = 0.0, top_k: int = 24, one_per_product: bool = False, group: str = "",
                        collapse_linked: bool = False):
            """Search by words ("white leather high-top sneaker").

            Args:
                query: what the shoe looks like, in words
                {filters}
                {collapse_linked}
            {returns}
            """
            return outputs_of(handlers.search_text(query, factories, product, exact, min_score, top_k,
                                                   one_per_product, group, collapse_linked))

        # Public endpoints are registered before the private events that reuse their functions:
        # Gradio names an event after its function, and a later public one would become /search_text_1.
        gr.Button(visible=False).click(search_text, [gr.Textbox(visible=False, label="query"), *api_filters,
                                                     api_collapse], api_shown, api_name="search_text")
        text_button.click(search_text, [text, *filters, collapse_linked], shown, api_visibility="private")
        text.submit(search_text, [text, *filters, collapse_linked], shown, api_visibility="private")

        def on_photo(photo):
            items, note = handlers.detect(upload_path(photo, max_upload))
            return items, note, 0, ""

        @search_endpoint_doc
        def search_image(photo=None, region: int = 0, factories: list[str] | None = None, product: str = "",
                         exact: bool = False, min_score: float = 0.0, top_k: int = 24,
                         one_per_product: bool = False, group: str = "", text: str = "", text_weight: float = 1.0,
                         not_text: str = "", image_url: str = "", collapse_linked: bool = False):
            """Search by a photo: a detected shoe in it, or the whole photo; optionally plus and minus words.

            Args:
                photo: the query photo (gradio_client: handle_file(path or URL)); None to use image_url
                region: 0 = the most confident detected shoe, 1 = the next, ..., -1 = the whole photo
                {filters}
                text: words to add, comma-separated ("red, patent leather"): like this photo, but ...
                text_weight: weight of each word against the photo, which weighs 1 (0-5)
                not_text: words to avoid, comma-separated ("suede")
                image_url: an http(s) URL the server fetches the photo from, when `photo` is None
                {collapse_linked}
            {returns}
            """
            return outputs_of(handlers.search_image(upload_path(photo, max_upload), region, factories, product,
                                                    exact, min_score, top_k, one_per_product, group, text,
                                                    text_weight, not_text, image_url, collapse_linked))

        gr.Button(visible=False).click(
            search_image, [gr.Image(visible=False, type="filepath", label="photo"),
                           gr.Number(0, precision=0, visible=False, label="region"), *api_filters, *api_words,
                           gr.Textbox("", visible=False, label="image_url"), api_collapse],
            api_shown, api_name="search_image", preprocess=False)

        words = [words_add, words_weight, words_avoid]

        def search_photo(photo, region, crop_id, factories, product, exact, min_score, top_k, one_per_product, group,
                         text, text_weight, not_text, collapse=False):
            """The page's photo search: the indexed crop picked with "Search with it + words", else the photo."""
            if crop_id:
                return outputs_of(handlers.more_like_this(crop_id, factories, product, exact, min_score, top_k,
                                                          one_per_product, group, text, text_weight, not_text,
                                                          collapse))
            return search_image(photo, region, factories, product, exact, min_score, top_k, one_per_product, group,
                                text, text_weight, not_text, "", collapse)

        photo_inputs = [photo, region, crop_query, *filters, *words, collapse_linked]
        photo_button.click(search_photo, photo_inputs, shown, api_visibility="private", preprocess=False)
        words_add.submit(search_photo, photo_inputs, shown, api_visibility="private", preprocess=False)
        words_avoid.submit(search_photo, photo_inputs, shown, api_visibility="private", preprocess=False)
        # Upload -> detected shoes shown -> search at once with the best one; a click on another
        # detected shoe searches with that one.
        photo.upload(on_photo, [photo], [regions, detect_note, region, crop_query], api_visibility="private",
                     preprocess=False).then(search_photo, photo_inputs, shown, api_visibility="private",
                                            preprocess=False)
        photo.clear(lambda: ([], "", 0, ""), None, [regions, detect_note, region, crop_query],
                    api_visibility="private")

        def fetch_url(url, *filters_and_words):
            """A photo by URL: shown in the photo box, its shoes detected, searched with the first."""
            fetched, items, note = handlers.fetch_url(url)
            if fetched is None:
                return None, [], note, 0, "", [], [], note, []
            *filters_and_words, collapse = filters_and_words
            found = handlers.search_image(fetched, 0, *filters_and_words, "", collapse)
            return fetched, items, note, 0, "", *outputs_of(found)

        url_outputs = [photo, regions, detect_note, region, crop_query, *shown]
        url_button.click(fetch_url, [image_url, *filters, *words, collapse_linked], url_outputs,
                         api_visibility="private")
        image_url.submit(fetch_url, [image_url, *filters, *words, collapse_linked], url_outputs,
                         api_visibility="private")

        def pick_region(evt: gr.SelectData):
            return evt.index

        regions.select(pick_region, None, region, api_visibility="private").then(
            search_photo, photo_inputs, shown, api_visibility="private", preprocess=False)

        def select_hit(hits, evt: gr.SelectData):
            return handlers.hit_detail(hits, evt.index)

        results.select(select_hit, [hits_state], [detail_photo, detail, selected_id], api_visibility="private",
                       js=SCROLL_TO_DETAIL)

        @search_endpoint_doc
        def more_like_this(point_id: str, factories: list[str] | None = None, product: str = "", exact: bool = False,
                           min_score: float = 0.0, top_k: int = 24, one_per_product: bool = False, group: str = "",
                           text: str = "", text_weight: float = 1.0, not_text: str = "", collapse_linked: bool = False):
            """Crops most like an indexed crop (by its point id), the crop itself left out; optionally
            plus and minus words.

            Args:
                point_id: an indexed crop's id (a hit's point_id)
                {filters}
                text: words to add, comma-separated ("red"): like this crop, but ...
                text_weight: weight of each word against the crop, which weighs 1 (0-5)
                not_text: words to avoid, comma-separated ("suede")
                {collapse_linked}
            {returns}
            """
            return outputs_of(handlers.more_like_this(point_id, factories, product, exact, min_score, top_k,
                                                      one_per_product, group, text, text_weight, not_text,
                                                      collapse_linked))

        # By point id, for scripts; the button below runs the same with the selected result.
        gr.Button(visible=False).click(more_like_this, [gr.Textbox(visible=False, label="point_id"), *api_filters,
                                                        *api_words, api_collapse], api_shown, api_name="more_like_this")

        def more_like_selected(point_id, *filters_and_collapse):
            *chosen, collapse = filters_and_collapse
            return more_like_this(point_id, *chosen, collapse_linked=collapse)

        more_button.click(more_like_selected, [selected_id, *filters, collapse_linked], shown, api_visibility="private")

        def use_crop(point_id, hits, *filters_and_words):
            """The selected result becomes the photo query (its stored vector), searched with the words."""
            thumbnail, note = handlers.crop_as_query(point_id, hits)
            if thumbnail is None:  # nothing selected: say so where the person is looking
                return gr.Tabs(), *[gr.skip()] * 5, gr.skip(), gr.skip(), note, gr.skip()
            found = handlers.more_like_this(point_id, *filters_and_words)
            return gr.Tabs(selected="by-photo"), thumbnail, [], note, 0, point_id, *outputs_of(found)

        use_crop_button.click(use_crop, [selected_id, hits_state, *filters, *words, collapse_linked],
                              [query_tabs, photo, regions, detect_note, region, crop_query, *shown],
                              api_visibility="private", js=SCROLL_TO_QUERY)

        @search_endpoint_doc
        def refine(liked: list[str] | None = None, disliked: list[str] | None = None,
                   factories: list[str] | None = None, product: str = "", exact: bool = False, min_score: float = 0.0,
                   top_k: int = 24, one_per_product: bool = False, group: str = "", collapse_linked: bool = False):
            """Crops like the liked ones and unlike the disliked ones (Qdrant's recommend query over
            their stored vectors: average_vector with a like, best_score with dislikes only).

            Args:
                liked: point ids of indexed crops to find more like
                disliked: point ids of indexed crops to move away from
                {filters}
                {collapse_linked}
            {returns}
            """
            return outputs_of(handlers.refine(liked, disliked, factories, product, exact, min_score, top_k,
                                              one_per_product, group, collapse_linked))

        api_examples = [gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True, visible=False,
                                    label=name) for name in ("liked", "disliked")]
        gr.Button(visible=False).click(refine, [*api_examples, *api_filters, api_collapse], api_shown,
                                       api_name="refine")
        refine_button.click(refine, [liked, disliked, *filters, collapse_linked], shown, api_visibility="private",
                            js=SCROLL_TO_RESULTS)

        def mark(liked_ids, disliked_ids, labels, point_id, hits, like: bool):
            liked_ids, disliked_ids, labels, note = handlers.mark(liked_ids, disliked_ids, labels, point_id, hits, like)
            choices = [(label, point_id) for point_id, label in labels.items()]
            return (gr.Dropdown(choices=choices, value=liked_ids), gr.Dropdown(choices=choices, value=disliked_ids),
                    labels, note)

        marked = [liked, disliked, labels_state, feedback_note]
        like_button.click(lambda a, b, c, d, e: mark(a, b, c, d, e, True),
                          [liked, disliked, labels_state, selected_id, hits_state], marked, api_visibility="private")
        dislike_button.click(lambda a, b, c, d, e: mark(a, b, c, d, e, False),
                             [liked, disliked, labels_state, selected_id, hits_state], marked,
                             api_visibility="private")
        clear_button.click(lambda: (gr.Dropdown(choices=[], value=[]), gr.Dropdown(choices=[], value=[]), {}, ""),
                           None, marked, api_visibility="private")

        def find_duplicates(dup_t, sim_t, scope_, chosen, level_, linkage_, progress=gr.Progress()):
            found = handlers.find_duplicates(dup_t, sim_t, scope_, chosen, level_, linkage_,
                                             progress=lambda fraction, what: progress(fraction, desc=what))
            return (found.status, found.heatmap, found.gallery, found.groups, found.files or None, [], "", None,
                    found.count, "")

        dup_button.click(find_duplicates, [dup_threshold, sim_threshold, scope, dup_factories, level, linkage],
                         [dup_status, heatmap, group_list, groups_state, reports, group_view, selected_group,
                          selected_member, review_count, review_status],
                         api_visibility="private", concurrency_limit=1)

        def pick_group(groups, evt: gr.SelectData):
            members, group_id = handlers.group_members(groups, evt.index)
            return members, group_id, None

        group_list.select(pick_group, [groups_state], [group_view, selected_group, selected_member],
                          api_visibility="private")

        def pick_member(evt: gr.SelectData):
            return evt.index

        group_view.select(pick_member, None, selected_member, api_visibility="private")

        reviewed = [groups_state, group_list, group_view, selected_group, selected_member, review_status, review_count]

        def shown_review(review):
            # The members' gallery is new: nothing in it is selected (the next reject needs a new click).
            return (review.groups, review.gallery, gr.Gallery(value=review.members, selected_index=None),
                    review.group_id, None, review.message, review.count)

        def confirm(groups, group_id):
            return shown_review(handlers.confirm_group(groups, group_id))

        def reject(groups, group_id, member):
            return shown_review(handlers.reject_member(groups, group_id, member))

        def make_representative(groups, group_id, member):
            return shown_review(handlers.make_representative(groups, group_id, member))

        def link(groups, group_id):
            return shown_review(handlers.link_products(groups, group_id))

        def next_group(groups, group_id):
            return shown_review(handlers.next_group(groups, group_id))

        # Decisions are written one at a time (each a read-modify-write of the decisions file).
        for button, action, inputs in (
                (confirm_button, confirm, [groups_state, selected_group]),
                (reject_button, reject, [groups_state, selected_group, selected_member]),
                (representative_button, make_representative, [groups_state, selected_group, selected_member]),
                (link_button, link, [groups_state, selected_group]),
                (next_button, next_group, [groups_state, selected_group])):
            button.click(action, inputs, reviewed, api_visibility="private", concurrency_limit=1,
                         concurrency_id="review")
        # Keys c / x / r / p / n press the review buttons while the Duplicates tab shows (not while typing).
        duplicates_tab.select(None, None, None, js=REVIEW_KEYS, api_visibility="private")

        def search_group(groups, group_id):
            found = handlers.search_group(groups, group_id)
            if not found.hits:  # nothing picked: stay on this tab, say why
                return gr.Tabs(), gr.Textbox(), *outputs_of(found)
            return gr.Tabs(selected="search"), group_id, *outputs_of(found)

        group_search.click(search_group, [groups_state, selected_group], [tabs, group, *shown],
                           api_visibility="private")

        def add(files, factory, progress=gr.Progress()):
            report = handlers.add_photos(files, factory, progress=lambda done, total: progress((done, total)))
            return report, *refresh_filters()

        upload_button.click(add, [uploads, upload_factory], [upload_report, *refreshed],
                            api_visibility="private", concurrency_limit=1)
    return demo


def create_handlers(app: "App", preload: bool = True) -> "Handlers":
    """The UI's behaviour over `app`'s store and models (core/app.py), which every request shares.

    Refuses a store another search UI already serves (StoreLocked), and (SchemaMismatch) a
    collection made by another CLIP model, as the CLI does, instead of starting and failing
    every search. `preload`: load the models now (app.preload), not at the first request.
    """
    from core.errors import StoreLocked
    from core.store.base import check_model
    from search_ui.handlers import Handlers

    store = app.store
    if store.holder is not None:  # another search-ui holds and serves this store
        raise StoreLocked(f"The {store.location} is already served by {store.holder}: use that one, "
                          f"or stop it first.")
    embedder = app.embedder
    info = store.info()
    if info is not None:  # before any model loads: a mismatch is known from the names
        check_model(info, store.collection, store.location, embedder.model_id, None, embedder.text_model_id)
    if preload:
        app.preload()
        if info is not None:
            check_model(info, store.collection, store.location, embedder.model_id, embedder.dimension)
    return Handlers(app.settings, store, app.search, app.ingest)


def preload_models(app: "App", handlers: "Handlers"):
    """Load the models (`app.preload`) on a background thread while the page is served: a search
    that comes first waits for them (each model loads once, under its own lock). Returns the
    Future; its error (a model that cannot load, or a collection of another dimension) is raised
    by `launch`."""
    from concurrent.futures import ThreadPoolExecutor

    from core.store.base import check_model

    store, embedder = app.store, app.embedder

    def load() -> None:
        app.preload()
        info = store.info()
        if info is not None:
            check_model(info, store.collection, store.location, embedder.model_id, embedder.dimension)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preload-models")
    handlers.models_loading = executor.submit(load)
    executor.shutdown(wait=False)
    return handlers.models_loading


class LoginThrottle:
    """Gradio's login check with a back-off: after a failed attempt the next answer waits.

    Each failure doubles the wait (from `base` seconds up to `cap`) for everyone, so a password
    cannot be guessed at request speed; a success resets it.
    """

    def __init__(self, username: str, password: str, base: float = 0.5, cap: float = 8.0) -> None:
        import hmac

        self._compare = hmac.compare_digest
        self.username, self.password = username, password
        self.base, self.cap = base, cap
        self.failures = 0
        self._lock = threading.Lock()

    def delay(self) -> float:
        return 0.0 if self.failures == 0 else min(self.cap, self.base * 2 ** (self.failures - 1))

    def __call__(self, username: str, password: str) -> bool:
        with self._lock:
            wait = self.delay()
        if wait:
            time.sleep(wait)
        ok = self._compare(str(username).encode(), self.username.encode()) & \
            self._compare(str(password).encode(), self.password.encode())
        with self._lock:
            self.failures = 0 if ok else self.failures + 1
        if not ok:
            log.warning("failed login for %r (%d in a row)", str(username)[:64], self.failures)
        return bool(ok)


EMPTY_API_INFO = b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'


class LoginPageOnly:
    """ASGI middleware: before login, the page is the login form and nothing else.

    Gradio's login page still embeds the app's API schema (`window.gradio_api_info`: endpoint
    and parameter names, example inputs). For a page whose config says `auth_required`, that
    script is emptied; every other response passes through untouched.
    """

    _API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET":
            return await self.app(scope, receive, send)
        start: dict = {}
        body = bytearray()

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
                headers = dict(message.get("headers") or [])
                if not headers.get(b"content-type", b"").startswith(b"text/html"):
                    start["passthrough"] = True
                    await send(message)
            elif start.get("passthrough"):
                await send(message)
            else:
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    page = bytes(body)
                    if b'"auth_required":true' in page:
                        page = self._API_INFO.sub(EMPTY_API_INFO, page, count=1)
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(page)).encode()))
                    await send({"type": "http.response.start", "status": start["status"], "headers": headers})
                    await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, capture)


def _middleware(cls):
    from starlette.middleware import Middleware

    return Middleware(cls)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def serve_store(settings: "Settings", handlers: "Handlers", demo: "gr.Blocks"):
    """Serve the embedded store this UI holds to `ingest` commands run meanwhile (core/store/host.py):
    loopback only, with a token readable by this user only. None with a Qdrant server (nothing to share)."""
    from core.store.host import StoreHost

    stores = [handlers.store] + ([handlers.search.head_index.store] if handlers.search.head_index else [])
    if not all(store.servable for store in stores):
        return None
    # The UI's own write lock: uploads, duplicate searches and CLI writes take turns; searches go on.
    host = StoreHost(stores, handlers._ingest_lock, settings.ui_host)
    handlers.writer_elsewhere = host.remote_writer  # the page says so rather than wait for a long CLI run
    return host.mount(demo.app, demo.server_port)


def launch(settings: "Settings", handlers: "Handlers", block: bool = True, models_loading=None):
    """Serve the app on UI_HOST:UI_PORT with the configured login and upload limit. With `block`,
    a failure of `models_loading` (from `preload_models`) stops serving and is raised."""
    demo = build_app(handlers)
    auth = LoginThrottle(settings.ui_username, settings.ui_password) \
        if settings.ui_username and settings.ui_password else None
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
        prevent_thread_lock=True,
        quiet=True,  # no "set share=True" hint: this app is served from your machine, not shared links
        footer_links=["api"],
        css=CSS,
        app_kwargs={"middleware": [_middleware(LoginPageOnly)]} if auth else None,
    )
    demo.store_host = serve_store(settings, handlers, demo)
    if block:
        print(f"search-ui: serving on http://{settings.ui_host}:{settings.ui_port} (Ctrl+C to stop)", flush=True)
        try:
            if models_loading is not None:
                models_loading.result()  # a model that cannot load ends the program with its one line
                log.info("models loaded")
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        except BaseException:
            demo.close()
            raise
        finally:
            if demo.store_host is not None:  # before the store closes: CLI commands then open it themselves
                demo.store_host.close()
    return demo


def main() -> None:
    """Console entry point `search-ui`."""
    from core.app import open_app
    from core.errors import ShoeSearchError
    from core.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings()
    except ShoeSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if port_in_use(settings.ui_host, settings.ui_port):  # before minutes of model loading
        print(f"error: UI_PORT {settings.ui_port} on {settings.ui_host} is already in use (another search-ui?): "
              f"stop that program or set UI_PORT to a free port.", file=sys.stderr)
        sys.exit(1)
    with open_app(settings) as app:  # closes the store (and the head's) when serving ends
        try:
            handlers = create_handlers(app, preload=False)
        except ShoeSearchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        try:
            # The page is served while the models load (first answer sooner; see README, Benchmarks).
            launch(settings, handlers, models_loading=preload_models(app, handlers))
        except ShoeSearchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except OSError as exc:  # the port was taken while the models loaded
            print(f"error: cannot serve on {settings.ui_host}:{settings.ui_port} (UI_PORT): {exc.strerror or exc}",
                  file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
