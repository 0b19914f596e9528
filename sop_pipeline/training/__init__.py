"""Fine-tuning: pluggable backends, the run lifecycle and the retrain scheduler."""
