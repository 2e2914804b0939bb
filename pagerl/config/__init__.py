"""Recipes: the typed schema, loading with inheritance and overrides, and validation."""

from pagerl.config.load import load_recipe, recipe_to_yaml, save_recipe
from pagerl.config.schema import RecipeConfig

__all__ = ["RecipeConfig", "load_recipe", "recipe_to_yaml", "save_recipe"]
