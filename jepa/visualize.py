"""Pictures of what a model learned: ``python -m jepa.visualize --checkpoint PATH [--dataset NAME] [--out DIR]``.

Writes ``masks.png`` (training images with the sampled context tinted and target blocks outlined),
``features.png`` (each image beside the PCA colouring of its patch features, trained and random-init
encoder) and ``retrieval.png`` (test queries and their nearest training images). During training the
same pictures go to TensorBoard and W&B every ``logging.images_every_epochs`` (``TrainingPictures``).
Everything is fixed by the seed: the same checkpoint and seed give the same bytes.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from jepa import cli
from jepa import distributed as jdist
from jepa import drawing as pic
from jepa.data import TrainBatches, eval_transform, normalisation
from jepa.data.datasets import load_dataset, load_options
from jepa.data.datasets.decode import BadImageError
from jepa.data.shard_reader import SampleStream
from jepa.device import autocast, pick_device, pick_precision
from jepa.errors import ConfigError
from jepa.eval import extract_features, load_source, random_init_encoder, run_data_root
from jepa.seeds import mix_seed

log = logging.getLogger("jepa")

CLASS_NAMES = {
    "fashion_mnist": ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "boot"),
    "mnist": tuple(str(i) for i in range(10)),
    "cifar10": ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "stl10": ("plane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
}
PICTURES = ("masks", "features", "retrieval")


def label_names(dataset) -> list[str]:
    """A readable name per class: the dataset's own, an image folder's class folders, else the class index."""
    names = getattr(dataset, "classes", None) or CLASS_NAMES.get(dataset.name)
    return list(names) if names else [str(i) for i in range(max(dataset.num_classes, 1))]


def fixed_indices(dataset, n: int, seed: int, salt: int, labelled: bool = False) -> torch.Tensor:
    """``n`` distinct item indices (sorted), the same for the same seed and salt; ``labelled``: only labelled items
    (none for a dataset without labels, such as a mixture)."""
    labels = getattr(dataset, "labels", None)
    if not labelled:
        pool = torch.arange(len(dataset))
    else:
        pool = torch.empty(0, dtype=torch.long) if labels is None else (labels >= 0).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(mix_seed(seed, salt))
    return pool[torch.randperm(len(pool), generator=g)[:n]].sort().values


@torch.no_grad()
def patch_features(encoder, x: torch.Tensor, amp_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The encoder's output tokens as ``[n, gh, gw, D]`` float32 (the grid is the encoder's patch grid)."""
    was_training = encoder.training
    encoder.eval()
    try:
        with autocast(x.device, amp_dtype):
            h = encoder(x)
    finally:
        encoder.train(was_training)
    return h.float().cpu().view(x.shape[0], *encoder.grid, -1)


class PictureMaker:
    """The three pictures for one config and one pair of datasets, on fixed images chosen by ``seed``.

    ``train`` gives the mask batches and the retrieval gallery (``gallery`` labelled images), ``test`` the
    feature-map images (``images``) and the retrieval queries (``queries``, each with ``neighbours`` shown);
    without a test split both come from ``train``. The random-init feature map is computed once and kept.
    """

    def __init__(self, cfg, train, test=None, device="cpu", amp_dtype=torch.float32, images: int = 8,
                 queries: int = 6, neighbours: int = 8, gallery: int = 1000):
        self.cfg, self.train, self.test = cfg, train, test if test is not None else train
        self.device, self.amp_dtype = torch.device(device), amp_dtype
        self.seed = cfg.training.seed
        self.mean, self.std = normalisation(cfg)
        self.transform = eval_transform(cfg)
        self.scale = pic.display_scale(cfg.data.image_size)
        self.grid_idx = fixed_indices(self.test, images, self.seed, 11)
        self.query_idx = fixed_indices(self.test, queries, self.seed, 12, labelled=True)
        self.gallery_idx = fixed_indices(self.train, gallery, self.seed, 13, labelled=True)
        self.neighbours = neighbours
        self.random_map: torch.Tensor | None = None
        self.stream: TrainBatches | None = None

    def masks(self, epoch: int = 0, data: TrainBatches | None = None, n: int = 16) -> torch.Tensor:
        """Batch 0 of ``epoch`` as training drew it (augmented images, context and targets), first ``n`` images."""
        if data is None:
            if self.stream is None:
                self.stream = TrainBatches(self.cfg, self.train)
            data = self.stream
        batch = data.first_batch(epoch)
        images = pic.to_rgb_uint8(batch.images[:n], self.mean, self.std)
        grid = data.sampler.grid  # the patch grid the masks were drawn on
        tiles = []
        for i in range(images.shape[0]):
            context = torch.cat([c[i] for c in batch.ctx_idx])                   # all context masks of image i
            tiles.append(pic.mask_overlay(pic.upscale(images[i], self.scale), grid, context,
                                          [t[i] for t in batch.tgt_idx]))
        return pic.grid_of(tiles, min(8, len(tiles)))

    def features(self, encoder) -> torch.Tensor:
        """Each grid image beside the PCA colouring of ``encoder``'s patch features and of the random-init ones."""
        images, _ = self.test.get_batch(self.grid_idx)
        x = self.transform(images).to(self.device)
        trained = pic.pca_rgb(patch_features(encoder, x, self.amp_dtype))
        if self.random_map is None:
            self.random_map = pic.pca_rgb(patch_features(random_init_encoder(self.cfg, self.device), x, self.amp_dtype))
        rgb = pic.to_rgb_uint8(x, self.mean, self.std)
        return pic.feature_rows(rgb, [trained, self.random_map], ["trained", "random init"], self.scale, cols=2)

    @torch.no_grad()
    def retrieval(self, encoder) -> torch.Tensor:
        """Each query and its nearest gallery images by cosine similarity of token-mean features (as k-NN)."""
        feats = [extract_features(encoder, ds, self.transform, "mean", 256, self.device, idx,
                                  amp_dtype=self.amp_dtype)
                 for ds, idx in ((self.train, self.gallery_idx), (self.test, self.query_idx))]
        sims = F.normalize(feats[1][0], dim=1) @ F.normalize(feats[0][0], dim=1).T
        k = min(self.neighbours, len(self.gallery_idx))
        nearest = self.gallery_idx[sims.topk(k, dim=1).indices]                   # [queries, k] train indices
        names = label_names(self.train)
        q_images, q_labels = self.test.get_batch(self.query_idx)
        n_images, n_labels = self.train.get_batch(nearest.flatten())
        to_rgb = lambda u8: pic.to_rgb_uint8(self.transform(u8), self.mean, self.std)  # noqa: E731
        return pic.retrieval_rows(to_rgb(q_images), [names[int(y)] for y in q_labels],
                                  to_rgb(n_images).view(*nearest.shape, *n_images.shape[-2:], 3),
                                  [[names[int(y)] for y in row] for row in n_labels.view(nearest.shape)], self.scale)

    def all(self, encoder, epoch: int = 0, data: TrainBatches | None = None, only=PICTURES) -> dict[str, torch.Tensor]:
        out = {}
        if "masks" in only:
            out["masks"] = self.masks(epoch, data)
        if "features" in only:
            out["features"] = self.features(encoder)
        if "retrieval" in only:
            if len(self.query_idx) and len(self.gallery_idx):
                out["retrieval"] = self.retrieval(encoder)
            else:
                log.info("no retrieval picture: %s has no labelled images", self.train.name)
        return out


class TrainingPictures:
    """The pictures (``pictures/masks|features|retrieval``) to the logger's sinks (TensorBoard, W&B) every
    ``logging.images_every_epochs``.

    Rank 0 only, without grad and without the global RNG: the run's numbers and an exact resume are
    unchanged. Skipped under FSDP (the target encoder is sharded) and without a sink.
    """

    def __init__(self, cfg, data: TrainBatches, device, amp_dtype, logger):
        self.cfg, self.data, self.device, self.amp_dtype = cfg, data, device, amp_dtype
        self.logger = logger if logger.sinks else None  # a TrainLogger; None: nothing to draw for
        self.maker: PictureMaker | None = None

    def due(self, epoch: int) -> bool:
        """Default: the epochs that write a checkpoint (every ``checkpoint.every_epochs`` and the last)."""
        every = self.cfg.logging.images_every_epochs
        if every is None:
            every = self.cfg.checkpoint.every_epochs
            return epoch >= self.cfg.training.epochs or bool(every and epoch % every == 0)
        return bool(every) and epoch % every == 0

    def __call__(self, model, epoch: int, step: int):
        """After ``epoch`` epochs (at ``step``): draw and log the pictures if due."""
        if self.logger is None or not self.due(epoch) or jdist.is_sharded(model):
            return
        if isinstance(self.data.dataset, SampleStream):  # the pictures pick images by index; a stream has none
            log.info("no training pictures for a streamed dataset (python -m jepa.visualize --dataset NAME draws "
                     "them from an image folder or a map-style dataset)")
            self.logger = None
            return
        if self.maker is None:
            test = None
            try:
                if not self.cfg.data.mix and getattr(self.data.dataset, "name", None) == self.cfg.data.dataset:
                    test = load_dataset(self.cfg.data.dataset, "test", self.cfg.data.root,
                                        **load_options(self.cfg.data))
            except (FileNotFoundError, ValueError) as e:
                log.info("pictures: no test split (%s); queries come from the training images", str(e).splitlines()[0])
            self.maker = PictureMaker(self.cfg, self.data.dataset, test, self.device, self.amp_dtype, gallery=500)
        try:
            pictures = self.maker.all(model.target_encoder, max(epoch - 1, 0), self.data)
        except BadImageError as e:  # the pictures read files the training stream may have skipped
            log.warning("no training pictures from now on: %s", e)
            self.logger = None
            return
        for name, image in pictures.items():
            self.logger.image(f"pictures/{name}", image.numpy(), step)


def visualize(checkpoint: str | Path, dataset: str | None = None, out: str | Path | None = None,
              root: str | None = None, encoder: str = "target", device: str = "cpu", seed: int | None = None,
              epoch: int = 0, images: int = 8, queries: int = 6, neighbours: int = 8, gallery: int = 10000,
              only=PICTURES, precision: str = "auto") -> dict[str, Path]:
    """Write the pictures of a checkpoint (or exported encoder) as PNGs; returns their paths. ``precision`` as
    ``training.precision`` (``auto``: bf16 on CUDA and on CPUs with bf16 matrix units)."""
    if epoch < 0:
        raise ConfigError(f"--epoch must be >= 0 (the training epoch whose first batch shows the masks), got {epoch}")
    checkpoint = Path(checkpoint)
    cfg, model, _, _ = load_source(checkpoint, encoder, device)
    name = dataset or cfg.data.dataset
    if cfg.data.mix and dataset is None:
        raise ConfigError(f"{checkpoint} was trained on a mixture (data.mix); choose one dataset with --dataset")
    root = run_data_root(cfg, name) if root is None else root
    norm = model.normalization  # the training mean/std, also for another dataset
    cfg.data.dataset, cfg.data.mix, cfg.data.mean, cfg.data.std = name, None, list(norm["mean"]), list(norm["std"])
    if seed is not None:
        cfg.training.seed = seed
    load = load_options(cfg.data)
    train = load_dataset(name, "train", root, **load)
    try:
        test = load_dataset(name, "test", root, **load)
    except (FileNotFoundError, ValueError):
        test = None
    maker = PictureMaker(cfg, train, test, device, pick_precision(precision, torch.device(device)), images=images,
                         queries=queries, neighbours=neighbours, gallery=gallery)
    folder = Path(out) if out else checkpoint.with_name(f"{checkpoint.stem}.pictures")
    written = {}
    for kind, image in maker.all(model, epoch, only=only).items():
        written[kind] = folder / f"{kind}.png"
        pic.save_png(image, written[kind])
    return written


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m jepa.visualize", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or exported encoder (.pt)")
    parser.add_argument("--dataset", help="dataset to draw from (default: the one trained on)")
    parser.add_argument("--data-root", help="where the dataset lives (default: the run's data.root for the dataset "
                        "it trained on, else the usual search path)")
    parser.add_argument("--out", help="folder for the PNGs (default: <checkpoint>.pictures/ next to it)")
    parser.add_argument("--encoder", choices=("target", "context"), default="target")
    parser.add_argument("--only", default=",".join(PICTURES), help="comma-separated subset of " + ", ".join(PICTURES))
    parser.add_argument("--seed", type=int, help="picks the images and the mask batch (default: the run's seed)")
    parser.add_argument("--epoch", type=int, default=0, help="the training epoch whose first batch shows the masks")
    parser.add_argument("--images", type=int, default=8, help="images in the feature-map picture")
    parser.add_argument("--queries", type=int, default=6, help="retrieval queries (test images)")
    parser.add_argument("--neighbours", type=int, default=8, help="nearest training images shown per query")
    parser.add_argument("--gallery", type=int, default=10000, help="training images searched for neighbours")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    cli.add_precision(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    only = tuple(p.strip() for p in args.only.split(",") if p.strip())
    bad = [p for p in only if p not in PICTURES]
    if bad or not only:
        parser.error(f"--only takes a comma-separated subset of {', '.join(PICTURES)}, got {args.only!r}")
    for flag in ("images", "queries", "neighbours", "gallery"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.epoch < 0:
        parser.error(f"--epoch must be >= 0, got {args.epoch}")
    written = visualize(args.checkpoint, args.dataset, args.out, args.data_root, args.encoder,
                        str(pick_device(args.device, "--device")), args.seed, args.epoch, args.images, args.queries,
                        args.neighbours, args.gallery, only, args.precision)
    for kind, path in written.items():
        print(f"wrote {path} ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
