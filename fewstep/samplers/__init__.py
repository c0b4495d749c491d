"""Learning-free and learned few-step sampling on any noise path (torch only)."""
