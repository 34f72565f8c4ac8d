"""The whole plan, automatically: cross-validation results, model selection, and ``autoseg run``."""
