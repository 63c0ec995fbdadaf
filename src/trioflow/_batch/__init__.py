"""Bounded batches: the engine, run_batch and amap, as_completed, outcomes, workers."""
