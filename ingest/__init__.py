"""The `ingest` command line: add photos, search, stats, remove."""
