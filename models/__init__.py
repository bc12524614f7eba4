"""Pure-PyTorch building blocks of Lethe: generator, ODE adapters, losses, judge.

Nothing here knows about queues, registries or orchestration: every file runs in a bare PyTorch process.
"""
