"""Hydra sweeper plugin ``hydra/sweeper=mr_optuna``: Optuna (>= 4) search over Hydra overrides."""
