"""Preprocessing: turn raw cases into normalised, resampled arrays for training, and undo it at export."""
