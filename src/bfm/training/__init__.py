"""Training: settings, data loading, the DeepSpeed loop, checkpoints and rank discovery."""
