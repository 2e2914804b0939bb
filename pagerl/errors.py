"""Errors PageRL raises for bad input, each meant to be shown to a user as it is.

Every message names where the problem is (a recipe file and key, a data file
and line) and what was expected, so the CLI prints it without a traceback.
"""


class PageRLError(Exception):
    """Base of the errors that describe bad input rather than a bug."""


class RecipeError(PageRLError):
    """A recipe (or an override) is invalid: unknown key, wrong type, missing or inconsistent value."""
