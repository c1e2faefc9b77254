"""Pieces of ``train_kd.py``: command line, schedule, data loading for exact resume, checkpoints, loop, outputs."""
