"""Distillation trainers on accelerate: one loop, one file per objective."""
