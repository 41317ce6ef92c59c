"""The choices config fields allow: ``Literal`` types and the small pure tables that go with them.

The schema owns these; the modules that implement a choice import it from here, so the config
never imports what it configures. ``jepa_kernels`` keeps its own ``KernelsBackend`` (it never
imports ``jepa``); a test holds the two equal.
"""
from __future__ import annotations

import re
import typing
from typing import Literal

# model
ModelSize = Literal["custom", "from_file", "tiny", "small", "base", "large", "huge", "giant"]
# named ViT sizes: (embed_dim, depth, num_heads)
MODEL_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
               "huge": (1280, 32, 16), "giant": (1408, 40, 16)}
AttentionBackend = Literal["auto", "xformers", "sdpa", "math"]
EncoderName = Literal["target", "context"]
TargetEncoder = Literal["ema", "online"]  # an EMA copy of the context encoder (I-JEPA), or that encoder itself (LeJEPA)
Pooling = Literal["mean", "last4"]  # token-mean of the output, or of each of the last 4 blocks (concatenated)
CompileMode = Literal["default", "max-autotune"]

# data
DatasetName = Literal["fashion_mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic", "shards",
                      "hf"]
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)
OnBadImage = Literal["error", "skip"]

# objective and optimisation
LossType = Literal["mse", "smooth_l1", "combined"]
PredictionLoss = Literal["mse", "smooth_l1"]
SigregOn = Literal["context", "target", "both"]  # which pooled embeddings SIGReg regularises
WdSchedule = Literal["cosine", "linear"]

# where and how a run computes
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
KernelsBackend = Literal["auto", "triton", "torch"]
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:(0|[1-9][0-9]{0,3}))?)$")
DistBackend = Literal["auto", "nccl", "gloo"]
DistStrategy = Literal["ddp", "fsdp"]  # replicated weights, or fully_shard on the ViT blocks

# checkpoints
BestMetric = Literal["loss", "knn"]  # what best.pt is chosen by: lowest epoch loss, or highest k-NN top-1
