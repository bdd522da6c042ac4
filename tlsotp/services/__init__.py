"""Twisted protocols, factories and services around the sans-I/O core: they move bytes and fire Deferreds."""
