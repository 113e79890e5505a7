"""Domain core of the shoe catalogue search: settings, models, store, services.

Nothing here imports the CLI or the UI. Heavy libraries (torch, ultralytics,
sentence-transformers, qdrant) are imported lazily inside the functions that need them.
"""
