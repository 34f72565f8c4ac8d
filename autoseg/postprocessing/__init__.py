"""Post-processing of predicted label maps, chosen on the cross-validation and stored as plain JSON."""
