"""A Hugging Face dataset streamed from its parquet files (``data.hf_streaming``), for sets larger than the disk.

Each row group of the split's parquet files is one part of a :class:`SampleStream`, counted from the files'
footers alone, so the tar shards' read plan (:mod:`jepa.data.shard_plan`) applies as it is: the parts are split
once among the run's (process, loader worker) readers, each reads its own once per epoch in a new order through
a shuffle buffer, and a resumed run starts at its batch exactly. Local files are read with pyarrow; hub files
(``hf://``) and other URLs through fsspec, a row group at a time.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Iterator

from jepa.data.datasets.errors import DatasetFormatError, DatasetNotFoundError
from jepa.data.datasets.hf import (HFOptions, builder, builder_splits, encoded, file_type, import_datasets, location,
                                   pick_split, split_files, split_name)
from jepa.data.shard_reader import Sample, SampleStream, offsets_of
from jepa.errors import ConfigError, UserError


@dataclass(frozen=True)
class Part:
    """One row group: its file, its index in the file, its rows."""

    url: str
    group: int
    rows: int


@contextlib.contextmanager
def open_parquet(url: str):
    """``url`` as a ``pyarrow.parquet.ParquetFile``: a local path, or any URL fsspec can open (``hf://``)."""
    import pyarrow.parquet as pq

    try:
        if "://" not in url:
            with pq.ParquetFile(url) as pf:
                yield pf
            return
        import fsspec
        with fsspec.open(url, "rb") as fp, pq.ParquetFile(fp) as pf:
            yield pf
    except UserError:
        raise
    except FileNotFoundError:
        raise DatasetNotFoundError(f"data.hf_path: the parquet file {url} does not exist (any more)", []) from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DatasetFormatError(f"{url}: not a readable parquet file ({type(exc).__name__}: {exc})") from None


def stream_files(opts: HFOptions, split: str) -> list[str]:
    """The parquet files of the command's ``split`` (``train`` is ``data.hf_split``): from the file pattern, or as
    the library resolves a folder or hub name (``hf://`` URLs for the hub)."""
    datasets = import_datasets()
    name, kind = split_name(opts, split), location(opts.path)
    if kind == "saved":
        raise ConfigError(f"data.hf_streaming: {opts.path!r} is a save_to_disk folder, already on this disk; set "
                          "data.hf_streaming: false to read it memory-mapped (streaming reads parquet files)")
    if kind == "files":
        files = split_files(opts, name)
    else:
        b = builder(datasets, opts.path)
        name = pick_split(name, builder_splits(b), repr(opts.path))
        files = [str(f) for s, fs in b.config.data_files.items() if str(s) == name for f in fs]
    if file_type(files, repr(opts.path)) != "parquet":
        raise ConfigError(f"data.hf_streaming: {opts.path!r} split {name!r} is in .arrow files; streaming reads "
                          "parquet files (set data.hf_streaming: false to read arrow files memory-mapped)")
    return files


def check_columns(schema, opts: HFOptions, url: str) -> list[str]:
    """The columns to read (image, and label unless null), each present in ``url`` and the image column holding
    encoded images (an Image feature's {bytes, path} or bytes), else an error naming the key."""
    import pyarrow as pa

    names = schema.names
    wanted = [("hf_image_column", opts.image_column), ("hf_label_column", opts.label_column)]
    for key, column in wanted:
        if column is not None and column not in names:
            raise ConfigError(f"data.{key}: no column {column!r} in {url}; its columns: {', '.join(names)}")
    kind = schema.field(opts.image_column).type
    images = (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
              or pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)
    if not images:
        raise ConfigError(f"data.hf_image_column: column {opts.image_column!r} of {url} holds {kind}, not images "
                          f"(an Image feature or encoded bytes); its columns: {', '.join(names)}")
    return [c for _, c in wanted if c is not None]


def class_names(schema, label: str | None) -> list[str]:
    """The ClassLabel names the ``datasets`` library stored in the parquet schema for ``label``, if any."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if label is None or meta is None:
        return []
    try:
        feature = json.loads(meta).get("info", {}).get("features", {}).get(label, {})
    except (ValueError, AttributeError):
        return []
    return list(feature.get("names", [])) if isinstance(feature, dict) else []


def count_parts(files: list[str], opts: HFOptions) -> tuple[list[Part], list[str], list[str]]:
    """Every non-empty row group of ``files`` with its rows (footers only), the columns read, the class names."""
    parts, columns, classes = [], [], []
    for url in files:
        with open_parquet(url) as pf:
            columns = check_columns(pf.schema_arrow, opts, url)
            classes = classes or class_names(pf.schema_arrow, opts.label_column)
            meta = pf.metadata
            parts += [Part(url, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
                      if meta.row_group(g).num_rows]
    return parts, columns, classes


class HFStream(SampleStream):
    """The row groups of a split's parquet files as a stream of samples (see the module doc)."""

    key = "data.hf_path"
    more_parts = "write the parquet files with smaller row groups (row_group_size)"

    def __init__(self, parts: list[Part], columns: list[str], classes: list[str], *, where: str, split: str,
                 channels: int, image_size: int):
        self.parts, self.columns, self.classes = parts, columns, classes
        self.urls = [f"{p.url}#{p.group}" for p in parts]
        self.counts = [p.rows for p in parts]
        self.offsets = offsets_of(self.counts)
        self.num_classes = len(classes)
        self.where, self.name, self.split, self.channels, self.image_size = where, "hf", split, channels, image_size

    def __repr__(self) -> str:
        return f"HFStream({len(self.parts)} row groups, {len(self)} samples, {self.where})"

    def samples(self, shard: int, wanted: set[int]) -> Iterator[Sample]:
        """The rows of row group ``shard`` at the positions ``wanted``, in order; the group is read once."""
        import pyarrow as pa

        part = self.parts[shard]
        with open_parquet(part.url) as pf:
            table = pf.read_row_group(part.group, columns=self.columns)
        if table.num_rows != part.rows:
            raise DatasetFormatError(f"{part.url}: row group {part.group} holds {table.num_rows} rows, not the "
                                     f"{part.rows} counted when the run started; the file changed")
        positions = sorted(wanted)
        rows = table.take(pa.array(positions, type=pa.int64())).to_pylist()
        image, label = self.columns[0], self.columns[1] if len(self.columns) > 1 else None
        for j, row in zip(positions, rows):
            name = f"{part.url}[row group {part.group}, row {j}]"
            value = row.get(label) if label is not None else None
            yield Sample(shard, j, name, encoded(row[image], name), -1 if value is None else int(value))


def load_hf_stream(opts: HFOptions, split: str, channels: int, image_size: int) -> HFStream:
    """The :class:`HFStream` of the command's ``split`` of ``opts``."""
    files = stream_files(opts, split)
    parts, columns, classes = count_parts(files, opts)
    if not parts:
        raise DatasetNotFoundError(f"data.hf_path {opts.path!r}: the {len(files)} parquet file(s) of split "
                                   f"{split_name(opts, split)!r} hold no rows")
    return HFStream(parts, columns, classes, where=f"{opts.path} split {split_name(opts, split)}",
                    split=split, channels=channels, image_size=image_size)
