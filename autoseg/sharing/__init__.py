"""Sharing trained models: export to a verified zip archive and import it safely."""
