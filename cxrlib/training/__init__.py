"""Training: the stage registry, each stage's step, the Trainer loop, batches, precision and DDP,
checkpoints and the run folder's per-stage files. Imports config, data, model, losses, metrics."""
