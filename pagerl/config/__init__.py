"""Recipes: the typed schema, loading with inheritance and overrides, and validation.

Where each check lives: types and single-field checks on the schema's fields
(:mod:`pagerl.config.schema`, helpers in :mod:`pagerl.config.checks`);
registry-valued keys marked on their fields and checked by one loop
(:mod:`pagerl.config.checks`); conditions between keys in
:mod:`pagerl.config.rules`; path keys in :mod:`pagerl.config.paths`. Commands
load recipes through :func:`pagerl.app.recipes.load_recipe`, which first
imports every registry and rule of the package.
"""

from pagerl.config.load import load_recipe, recipe_to_yaml, save_recipe
from pagerl.config.schema import RecipeConfig

__all__ = ["RecipeConfig", "load_recipe", "recipe_to_yaml", "save_recipe"]
