"""diffusers integration: FewStepScheduler, pipelines and models (the only place importing diffusers)."""
