"""trainlab's search path plugin (Hydra discovers plugins only in the hydra_plugins namespace)."""
