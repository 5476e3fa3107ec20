"""Training and evaluation helpers: losses, LR schedule, optimizers, SCHP, metrics, checkpoints."""
