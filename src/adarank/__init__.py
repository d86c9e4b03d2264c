"""adarank: a research harness for adaptive-rank LoRA fine-tuning (TriAdaptLoRA and its baselines)."""

__version__ = "0.1.0"
