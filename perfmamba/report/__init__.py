"""Rendering of typed records: human-readable numbers, Markdown/CSV tables, plots.  Formatting lives only here."""
