"""Training: cross-validation splits, the optimisation schedule, checkpoints, logging and the training loop."""
