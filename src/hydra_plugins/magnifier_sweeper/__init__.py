"""magnifier's Hydra plugin: the Optuna sweeper that resumes its study (see magnifier.sweeps).

Hydra loads sweeper classes only from the ``hydra_plugins`` namespace package, hence this home.
"""
