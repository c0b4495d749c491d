"""Distillation trainers on accelerate: one loop (`loop.train`), configs, one file per objective.

    from fewstep.distill.config import load_config
    from fewstep.distill.loop import train
    result = train(load_config("assets/configs/mixture_flow.yaml", ["max_steps=200"]), resume="latest")
"""
