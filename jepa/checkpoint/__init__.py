"""Checkpoints that never lose work.

* ``files``: one file, intact or refused: checksummed atomic saves, loading with ``weights_only``, the checks
  that tell a corrupt, truncated, foreign or pickled file from a checkpoint;
* ``retention``: a run's files: keep-last, ``best.pt``, the newest valid checkpoint, resuming and how to.
"""
from jepa.checkpoint.files import (CHECKSUM_KEY, ENCODER_FORMAT, FORMAT, REQUIRED_KEYS, CheckpointError,
                                   IncompatibleCheckpointError, check_checkpoint, load_checkpoint, load_file,
                                   save_checkpoint, state_digest, verify_checksum, with_checksum)
from jepa.checkpoint.retention import (BEST_NAME, Checkpointer, check_output, check_resumable,
                                       checkpoint_path, checkpoint_step, find_latest_valid, is_training_checkpoint,
                                       list_checkpoints, prune, restore_rng, rng_state, set_aside_newer)

__all__ = ["BEST_NAME", "CHECKSUM_KEY", "ENCODER_FORMAT", "FORMAT", "REQUIRED_KEYS", "CheckpointError",
           "Checkpointer", "IncompatibleCheckpointError", "check_checkpoint", "check_output", "check_resumable",
           "checkpoint_path", "checkpoint_step", "find_latest_valid", "is_training_checkpoint", "list_checkpoints",
           "load_checkpoint", "load_file", "prune", "restore_rng", "rng_state", "save_checkpoint",
           "set_aside_newer", "state_digest", "verify_checksum", "with_checksum"]
