"""The config schema: one dataclass per section, each field typed and documented.

Choice fields are ``Literal`` types from ``jepa.config.choices`` (the modules that implement a choice import
it from there); the docstring under each field is what ``--help-config`` prints.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from jepa.config.choices import (AttentionBackend, BestMetric, CompileMode, DatasetName, DistBackend, DistStrategy,
                                 EncoderName, KernelsBackend, LossType, ModelSize, OnBadImage, Pooling, Precision,
                                 PredictionLoss, SigregOn, TargetEncoder, WdSchedule)


@dataclass
class ModelConfig:
    """The context/target encoder (a ViT), the predictor and the H-JEPA levels."""
    size: ModelSize = "custom"
    """A named ViT size (tiny, small, base, large, huge, giant) fills embed_dim, depth and num_heads; from_file
    takes the architecture from model.init_from (the default when init_from is set and size is not)."""
    embed_dim: int = 192
    """Encoder width."""
    depth: int = 6
    """Encoder blocks."""
    num_heads: int = 3
    """Encoder attention heads; must divide embed_dim."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of the block width."""
    patch_size: int = 4
    """Side of the square patches, in pixels; must divide data.image_size."""
    pred_dim: int = 96
    """Predictor width."""
    pred_depth: int = 4
    """Predictor blocks."""
    pred_heads: int = 3
    """Predictor attention heads; must divide pred_dim."""
    attention: AttentionBackend = "auto"
    """Attention kernel: auto (xformers on CUDA where it runs, else SDPA), xformers, sdpa, or math (explicit)."""
    num_hierarchies: int = 1
    """Prediction levels, 1..4; 1 is pure I-JEPA, level l compares 2^l x 2^l pooled blocks."""
    predictor_shared_context: bool = False
    """Run the predictor once over the context and all target blocks (faster; changes the function)."""
    target_encoder: TargetEncoder = "ema"
    """Where the targets come from: ema (I-JEPA: an EMA copy of the context encoder) or online (LeJEPA: the
    context encoder itself on the full image, no copy held, no EMA; the prediction targets are a stop-gradient)."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in backward (context encoder and predictor): less memory, more time."""
    drop_path: float = 0.0
    """Stochastic depth: drop rate rising linearly over depth to this at the last block (not in the target
    encoder); 0 disables."""
    layer_scale: Optional[float] = None
    """LayerScale on every residual branch, initialised to this value (e.g. 1e-5); null disables."""
    init_from: Optional[str] = None
    """Start from these weights: a jepa checkpoint or export, an official I-JEPA .pth.tar or a Hugging Face
    IJepaModel directory (docs/interop.md); null: random initialisation. Not --resume: optimizer and schedules
    start fresh."""


@dataclass
class MixPart:
    """One dataset of a weighted mixture."""
    name: Optional[DatasetName] = None
    """The dataset (as data.dataset)."""
    root: Optional[str] = None
    """Where its files are (default: the usual search path)."""
    weight: float = 1.0
    """Relative sampling weight, > 0."""


@dataclass
class DataConfig:
    """Training images: dataset, size, batch, loader workers and augmentation."""
    dataset: DatasetName = "fashion_mnist"
    """The training dataset (ignored when data.mix is set)."""
    root: Optional[str] = None
    """Where the dataset's files are; null searches $JEPA_DATA, the system location and ./data."""
    download: bool = False
    """Fetch MNIST, Fashion-MNIST or CIFAR from their canonical URLs when missing (MD5-checked)."""
    download_url: Optional[str] = None
    """Another base URL for data.download."""
    image_size: int = 28
    """Side of the square training images, in pixels."""
    channels: Literal[1, 3] = 1
    """Colour channels the images are converted to."""
    batch_size: int = 128
    """Images per process and micro-batch."""
    num_workers: int = 0
    """DataLoader worker processes (0: batches are built in the training process)."""
    subset: Optional[int] = None
    """Train on the first N images only."""
    random_crop: bool = True
    """Random resized crops (off: the whole image)."""
    crop_scale: tuple[float, float] = (0.3, 1.0)
    """Area fraction range of the random crops."""
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    """Aspect ratio range of the random crops (sampled log-uniformly)."""
    hflip: bool = True
    """Random horizontal flips."""
    mean: Optional[list[float]] = None
    """Per-channel normalisation mean; null: the dataset's train-set statistics."""
    std: Optional[list[float]] = None
    """Per-channel normalisation std; null: the dataset's train-set statistics."""
    synthetic_size: int = 1024
    """Images of the synthetic dataset (tests and benchmarks)."""
    mix: Optional[list[MixPart]] = None
    """A weighted mixture of datasets instead of data.dataset."""
    on_bad_image: OnBadImage = "skip"
    """An image file that cannot be decoded: skip (replace it, count it, name it once) or error (stop)."""
    max_bad_images: int = 100
    """With skip: stop, naming the files, once more distinct files than this have failed."""
    shards: Optional[str] = None
    """With data.dataset: shards, the tar shards python -m jepa.shards wrote: "DIR/shard-{000000..000127}.tar"
    (or "pipe:CMD"); the index is looked up in data.root or beside them."""
    shuffle_buffer: int = 1000
    """With data.dataset: shards or a streamed hf dataset, the samples each loader worker shuffles its stream
    through (1: no shuffling)."""
    hf_path: Optional[str] = None
    """With data.dataset: hf, the Hugging Face dataset: a hub name (online), a save_to_disk folder, a folder of
    parquet files, or a parquet glob ("/data/in1k/{split}-*.parquet": {split} is replaced by the split's name)."""
    hf_split: str = "train"
    """With data.dataset: hf, the split trained on (evaluation's test split is --test-split, default test)."""
    hf_image_column: str = "image"
    """With data.dataset: hf, the column holding the images (an Image feature, or encoded bytes)."""
    hf_label_column: Optional[str] = "label"
    """With data.dataset: hf, the column holding integer labels; null: unlabelled (no probes)."""
    hf_streaming: bool = False
    """With data.dataset: hf, stream the parquet row groups (sets larger than the disk) instead of loading the
    split; each sample is read once per epoch by one (process, loader worker), through data.shuffle_buffer."""


@dataclass
class MaskConfig:
    """The multi-block mask sampler (docs/algorithm.md, "Multi-block masks")."""
    enc_scale: tuple[float, float] = (0.85, 1.0)
    """Area fraction range of the context block."""
    pred_scale: tuple[float, float] = (0.15, 0.2)
    """Area fraction range of each target block."""
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    """Aspect ratio range of the target blocks."""
    nenc: int = 1
    """Context blocks per image."""
    npred: int = 4
    """Target blocks per image."""
    min_keep: int = 10
    """Fewest patches a mask may keep; smaller masks are re-drawn."""
    allow_overlap: bool = False
    """Let the context block overlap the target blocks."""


VICREG_DEFAULTS = {"vicreg_weight": 0.1, "vicreg_var_weight": 25.0, "vicreg_cov_weight": 25.0,
                   "vicreg_inv_weight": 1.0}


@dataclass
class LossConfig:
    """The objective (docs/algorithm.md, "Loss")."""
    type: LossType = "mse"
    """mse (the paper), smooth_l1 (the reference code) or combined (a prediction loss plus a VICReg term)."""
    beta: float = 1.0
    """smooth_l1's beta."""
    base: PredictionLoss = "mse"
    """The prediction term of the combined loss."""
    normalize_targets: bool = True
    """Layer-norm the target features (no affine) before the loss."""
    normalize_embeddings: bool = False
    """Compare L2-normalised predictions and targets."""
    level_weights: Optional[list[float]] = None
    """Loss weight per H-JEPA level; null: 1, 0.5, 0.25, 0.125."""
    vicreg_weight: Optional[float] = None
    """Weight of the VICReg term (combined loss); null: 0.1."""
    vicreg_var_weight: Optional[float] = None
    """VICReg variance weight; null: 25."""
    vicreg_cov_weight: Optional[float] = None
    """VICReg covariance weight; null: 25."""
    vicreg_inv_weight: Optional[float] = None
    """VICReg invariance weight; null: 1."""
    sigreg_weight: float = 0.0
    """Weight of the SIGReg term (LeJEPA) added to the loss; 0 disables it."""
    sigreg_slices: int = 256
    """Random directions SIGReg projects on, redrawn every step from (training.seed, step)."""
    sigreg_on: SigregOn = "context"
    """Which per-image mean embeddings SIGReg regularises: context (the context encoder's output, as VICReg),
    target (the target forward; needs model.target_encoder: online) or both (the mean of the two terms)."""


@dataclass
class OptimConfig:
    """AdamW and its schedules (docs/algorithm.md, "Schedules")."""
    lr: float = 1e-3
    """Peak learning rate, reached after the warm-up."""
    start_lr: float = 2e-4
    """Learning rate at step 0."""
    final_lr: float = 1e-6
    """Learning rate at the last step (cosine decay)."""
    warmup_epochs: float = 15.0
    """Linear warm-up length, in epochs."""
    weight_decay: float = 0.04
    """Weight decay at step 0 (weights only: biases and norms never decay)."""
    final_weight_decay: float = 0.4
    """Weight decay at the last step."""
    wd_schedule: WdSchedule = "cosine"
    """Shape of the weight-decay ramp."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    ema: tuple[float, float] = (0.996, 1.0)
    """Target-encoder EMA momentum at the first and last step (linear in between)."""
    grad_clip: float = 0.0
    """Gradient-norm clipping threshold; 0 disables."""


@dataclass
class TrainingConfig:
    """Length, device, precision and the switches of the step."""
    epochs: int = 10
    """Passes over the training data."""
    device: str = "auto"
    """auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."""
    precision: Precision = "auto"
    """Autocast precision: auto (bf16 on CUDA and on CPUs with bf16 matrix units, else fp32), fp32, bf16 or fp16."""
    accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    seed: int = 0
    """Seed of the weights, data order, augmentation and masks."""
    stop_at_step: Optional[int] = None
    """End the run cleanly after this step, schedules unchanged (resume continues it)."""
    kernels: KernelsBackend = "auto"
    """Fused ops: auto (Triton on CUDA, PyTorch elsewhere), triton or torch."""
    compile: Union[bool, CompileMode] = False
    """torch.compile the model: false, true (default mode) or max-autotune."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms for the run."""


@dataclass
class LoggingConfig:
    """Run directory, TensorBoard, Weights & Biases and the progress line."""
    run_dir: Optional[str] = None
    """Where logs and checkpoints go; null: runs/<config name>."""
    log_every: int = 10
    """Steps between logged metrics."""
    tensorboard: bool = True
    """Write TensorBoard scalars to <run_dir>/tb."""
    wandb: bool = False
    """Also log the scalars, pictures and config to Weights & Biases (needs pip install 'jepa-trainer[wandb]')."""
    wandb_project: str = "jepa"
    """The W&B project of the run (WANDB_ENTITY, WANDB_MODE, WANDB_DIR and the other W&B variables apply)."""
    progress: bool = True
    """Show the progress line."""
    rankme_batch: Optional[int] = None
    """Held-out images whose target-embedding RankMe is logged as train/rankme; null: data.batch_size, 0: off."""
    collapse_warn_fraction: float = 0.6
    """Warn once when train/rankme falls below this fraction of its step-0 value; 0 never warns."""
    images_every_epochs: Optional[int] = None
    """Epochs between mask, feature-map and retrieval pictures (TensorBoard, W&B); null: each checkpoint epoch, 0: never."""


@dataclass
class CheckpointConfig:
    """When checkpoints are written and which are kept."""
    every_epochs: int = 1
    """Epochs between checkpoints (the last epoch always saves); 0 disables."""
    every_steps: int = 0
    """Steps between checkpoints; 0 disables."""
    keep_last: int = 2
    """Step checkpoints kept (best.pt is kept besides)."""
    monitor: BestMetric = "loss"
    """What best.pt is chosen by: the epoch loss, or the k-NN monitor (needs eval.every_epochs)."""


@dataclass
class EvalConfig:
    """The k-NN monitor during training (jepa.eval has its own fixed protocols)."""
    every_epochs: int = 0
    """Epochs between k-NN evaluations; 0 disables the monitor."""
    knn_k: int = 20
    """Neighbours that vote."""
    knn_temperature: float = 0.07
    """Temperature of the exp(similarity / t) vote weights."""
    max_train: int = 10000
    """Labelled train images used as the k-NN memory."""
    max_test: int = 2000
    """Test images classified."""
    encoder: EncoderName = "target"
    """Which encoder is evaluated."""
    features: Pooling = "mean"
    """mean: token-mean of the output; last4: concatenated token-means of the last 4 blocks."""


@dataclass
class ProbeConfig:
    """The streamed probes of python -m jepa.eval (--protocol attentive, linear-sgd); the defaults are the protocols."""
    batch_size: int = 256
    """Images per probe step and per feature batch."""
    seed: int = 0
    """Batch order and probe initialisation."""
    attentive_epochs: int = 10
    """Epochs of the attentive probe."""
    attentive_lr: float = 1.0e-3
    """AdamW peak learning rate of the attentive probe: linear warm-up from 0, then cosine to 0."""
    attentive_warmup_epochs: float = 1.0
    """Warm-up epochs of the attentive probe."""
    attentive_weight_decay: float = 0.05
    """AdamW weight decay of the attentive probe (weights only)."""
    attentive_queries: int = 1
    """Learned queries of the cross-attention pooling."""
    attentive_heads: Optional[int] = None
    """Attention heads of the pooling; null: the encoder's model.num_heads."""
    sgd_epochs: int = 10
    """Epochs of the SGD linear probe."""
    sgd_lr: float = 0.1
    """Peak learning rate of the SGD linear probe on standardised features; cosine to 0."""
    sgd_momentum: float = 0.9
    """SGD momentum, in [0, 1)."""
    sgd_weight_decay: float = 0.0
    """Weight decay of the SGD linear probe."""
    sgd_augment: bool = False
    """Probe features of training-augmented images, drawn anew every epoch."""


@dataclass
class FinetuneConfig:
    """python -m jepa.finetune: the whole encoder and a linear head, trained on labels."""
    epochs: int = 10
    """Epochs on the whole train split."""
    lowshot_epochs: int = 100
    """Epochs with --fraction or --shots."""
    batch_size: int = 128
    """Images per step (at most the subset's size)."""
    lr: float = 1.0e-3
    """AdamW peak learning rate of the head and final norm."""
    final_lr: float = 1.0e-6
    """Learning rate at the end of the cosine."""
    warmup_fraction: float = 0.1
    """Fraction of all steps of linear warm-up from 0, in [0, 1)."""
    weight_decay: float = 0.05
    """AdamW weight decay (weights only; biases and norms are not decayed)."""
    layer_decay: float = 0.75
    """Learning rate x this per block nearer the input (head x1, patch embedding x this^(depth+1)); 1: no decay."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy, in [0, 1)."""
    grad_clip: float = 1.0
    """Gradient-norm clip; 0 disables."""
    augment: bool = True
    """The pre-training crop and flip (data.*) on the fine-tuning images."""
    seed: int = 0
    """Low-shot subset, batch order, augmentation, head initialisation."""


@dataclass
class ProfilingConfig:
    """torch.profiler traces (also --profile)."""
    enabled: bool = False
    """Write traces to <run_dir>/profile."""
    wait: int = 1
    """Steps skipped before profiling."""
    warmup: int = 1
    """Profiled steps discarded as warm-up."""
    active: int = 3
    """Steps recorded."""


@dataclass
class DistributedConfig:
    """Used only under torchrun (WORLD_SIZE > 1); a plain run ignores it."""
    backend: DistBackend = "auto"
    """Process-group backend: auto (nccl on CUDA, gloo otherwise), nccl or gloo."""
    strategy: DistStrategy = "ddp"
    """ddp (replicated weights) or fsdp (fully_shard on the ViT blocks; bf16 or fp32)."""


@dataclass
class Config:
    """A whole run: one section per concern."""
    name: str = "run"
    """The run's name (default: the config file's name)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict:
        return _to_plain(self)


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def sections() -> list[tuple[str, type]]:
    """``(name, dataclass)`` of every section of ``Config``, in order."""
    default = Config()
    return [(f.name, type(getattr(default, f.name))) for f in dataclasses.fields(Config) if f.name != "name"]


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls``."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs
