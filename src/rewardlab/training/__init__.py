"""The training engine every trainer shares: seeding, checkpoints and exact resume, schedules,
metrics (JSONL + TensorBoard), progress, the optimizer step and batch order."""
