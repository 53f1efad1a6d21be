"""Command-line entry points: thin click shells over the library."""
