"""Training: the training loop, recipes, evaluation and the datasets."""
