"""Small shared helpers: atomic file writes, JSON, hashing, threads."""
