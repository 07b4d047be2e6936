"""The one training loop (source pre-training, the target oracle and adaptation) and its checkpoints."""
