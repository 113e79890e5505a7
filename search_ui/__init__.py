"""The Gradio search UI: `app.py` is the layout, `handlers.py` the plain functions it calls."""
