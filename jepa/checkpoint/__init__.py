"""Checkpoints that never lose work: file integrity (checksums, safe loading) and a run's retention and resuming."""
from jepa.checkpoint.retention import (BEST_NAME, CHECKSUM_KEY, ENCODER_FORMAT, FORMAT, REQUIRED_KEYS, BestMetric,
                                       CheckpointError, Checkpointer, IncompatibleCheckpointError, check_checkpoint,
                                       check_output, check_resumable, checkpoint_path, checkpoint_step,
                                       find_latest_valid, is_training_checkpoint, list_checkpoints, load_checkpoint,
                                       load_file, prune, restore_rng, rng_state, set_aside_newer, state_digest,
                                       verify_checksum, with_checksum)

__all__ = ["BEST_NAME", "CHECKSUM_KEY", "ENCODER_FORMAT", "FORMAT", "REQUIRED_KEYS", "BestMetric", "CheckpointError",
           "Checkpointer", "IncompatibleCheckpointError", "check_checkpoint", "check_output", "check_resumable",
           "checkpoint_path", "checkpoint_step", "find_latest_valid", "is_training_checkpoint", "list_checkpoints",
           "load_checkpoint", "load_file", "prune", "restore_rng", "rng_state", "set_aside_newer", "state_digest",
           "verify_checksum", "with_checksum"]
