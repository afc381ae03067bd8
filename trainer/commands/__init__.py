"""Sub-commands of m2grl-train, one module each (see trainer.cli)."""
