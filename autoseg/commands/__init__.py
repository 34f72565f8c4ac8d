"""Thin command-line entry points for stages that span several packages."""
