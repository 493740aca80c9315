"""Training pipeline for MCM adapters (run `python training/distill.py`)."""
