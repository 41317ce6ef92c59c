"""From files to a training batch: datasets, decoding, crops, transforms, bad images, tar shards, the batch stream.

``datasets/`` holds the registry and one module per format; ``shard_writer``, ``shard_reader`` and ``shard_plan``
write tar shards, read them, and plan which reader reads which; ``batches`` builds the training batches.
"""
from jepa.data.batches import Batch, TrainBatches, build_dataset, build_mask_sampler
from jepa.data.transforms import eval_transform, normalisation

__all__ = ["Batch", "TrainBatches", "build_dataset", "build_mask_sampler", "eval_transform", "normalisation"]
