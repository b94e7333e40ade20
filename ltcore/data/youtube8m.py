"""YouTube-8M's TFRecord files, read and written without TensorFlow.

YouTube-8M (Abu-El-Haija et al., "YouTube-8M: A Large-Scale Video Classification Benchmark", arXiv:1609.08675)
releases, for every video, Inception features of frames sampled at 1 per second (RGB, PCA-reduced to 1,024
dimensions) and VGGish-like audio features (128 dimensions), in sharded TFRecord files. The IEM paper (Zhu & Yang,
CVPR 2020, section 4.1, Table 3, Figures 5-6) trains NetVLAD on the frame-level features. The 2018 release's two
layouts, which this module follows:

- **video level** (``video/train0000.tfrecord`` ..): one ``tf.train.Example`` per video with ``id`` (bytes),
  ``labels`` (int64 list), ``mean_rgb`` (1,024 floats) and ``mean_audio`` (128 floats). These are floats in the
  release, not quantized, and are read as they are.
- **frame level** (``frame/train0000.tfrecord`` ..): one ``tf.train.SequenceExample`` per video; context ``id``
  and ``labels``; feature lists ``rgb`` (one 1,024-byte string a frame) and ``audio`` (one 128-byte string a
  frame), 8-bit quantized, at most 300 frames. :func:`dequantize` is the starter code's ``Dequantize``
  (google/youtube-8m ``utils.py``, ``max_quantized_value=2, min_quantized_value=-2``); :func:`quantize` is its
  inverse, so the reader returns the dequantized floats the starter code's models see.

Labels: we follow the 2018 release's vocabulary of 3,862 classes (``vocabulary.csv``), so a label must lie in
``[0, 3862)``. The paper says 3,696 classes; we read that as a count of classes present in some split or a
different release, and do not restrict labels to it.

The TFRecord framing is ours, the records' parsing is the ``tfrecord`` package's protos. A TFRecord is
``uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)``. ``tfrecord``'s own
``tfrecord_iterator`` reads both CRCs but never checks them, and a short read there is a bare ``RuntimeError``
without the record's index; so :func:`iter_tfrecords` frames the file itself, checks both CRCs (crc32c, masked as
TensorFlow masks them: ``((crc >> 15) | (crc << 17)) + 0xa282ead8``), and the protos of ``tfrecord.example_pb2``
parse the data. Writing uses ``tfrecord``'s serializers and the same framing. Files ending in ``.gz``, or
starting with gzip's magic bytes, are read as gzip streams (TensorFlow's ``compression_type="GZIP"``).

Every problem with a file is a :class:`YouTube8MRecordError` (a ``ValueError``) naming the file and the 0-based
record index: a truncated record, a bad length or data CRC, data that is not the layout's proto, a missing
feature, a feature of the wrong type or size (an ``rgb`` frame that is not 1,024 bytes, ``rgb`` and ``audio`` of
different frame counts), a label outside ``[0, 3862)``. Two stated rules:

- **More than 300 frames is an error** (naming the frame count), not a truncation with a warning: the release
  caps every video at 300 frames (its videos are sampled at 1 frame per second and at most 300 seconds long are
  kept), so a longer record is not YouTube-8M data, or was written wrongly, and cutting it would hide that.
  A model that wants fewer frames samples them itself.
- **A video with 0 frames is an error** at frame level: its features are undefined (a mean over no frames, a
  NetVLAD over an empty set), and an empty array would only fail later, far from the file. Video-level records
  have no frame count. An empty ``labels`` list is allowed (unlabelled videos, as in a test split); a missing
  ``labels`` feature is not.

:func:`make_youtube8m_fixture` writes a small long-tailed multi-label dataset in both layouts
(``python -m ltcore data make-fixture youtube8m DIR``); its docstring says what it shares with the real data.
"""
from __future__ import annotations

import gzip
import json
import os
import string
import struct
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import crc32c
import numpy as np
from google.protobuf.message import DecodeError
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

from ltcore.checks import check_choice, check_int
from ltcore.data.longtail import longtail_counts
from ltcore.io import atomic_write

NUM_CLASSES = 3862        # the 2018 release's vocabulary (the paper says 3,696)
RGB_SIZE, AUDIO_SIZE = 1024, 128
MAX_FRAMES = 300          # the release's cap: 1 frame a second, at most 300 seconds
MAX_QUANTIZED, MIN_QUANTIZED = 2.0, -2.0
LEVELS = ("frame", "video")
GZIP_MAGIC = b"\x1f\x8b"
CRC_MASK = 0xA282EAD8
FIXTURE_RECORD = "ltcore_fixture.json"


class YouTube8MRecordError(ValueError):
    """A record that is not YouTube-8M's layout; ``path`` and ``index`` (0-based) say which."""

    def __init__(self, path, index: int, problem: str):
        self.path, self.index = os.fspath(path), index
        super().__init__(f"{self.path}: record {index}: {problem}")


# ---------------------------------------------------------------- quantization


def dequantize(values: np.ndarray, max_quantized_value: float = MAX_QUANTIZED,
               min_quantized_value: float = MIN_QUANTIZED) -> np.ndarray:
    """The starter code's ``Dequantize``: uint8 codes -> float32 ``codes * scalar + bias``."""
    quantized_range = max_quantized_value - min_quantized_value
    scalar = quantized_range / 255.0
    bias = (quantized_range / 512.0) + min_quantized_value
    return (np.asarray(values, dtype=np.float32) * scalar + bias).astype(np.float32)


def quantize(values: np.ndarray, max_quantized_value: float = MAX_QUANTIZED,
             min_quantized_value: float = MIN_QUANTIZED) -> np.ndarray:
    """Floats -> uint8 codes, the inverse of :func:`dequantize`: clip to ``[min, max]``, then
    ``round((x - min) / (max - min) * 255)``.

    ``dequantize(quantize(x))`` is within one step (``(max - min) / 255``) of ``clip(x)``: rounding is off by at
    most half a step and ``dequantize``'s bias adds ``(max - min) / 512``, just under another half. Codes survive
    exactly: ``quantize(dequantize(q)) == q``, since ``q + 255 / 512`` rounds back to ``q``.
    """
    clipped = np.clip(np.asarray(values, dtype=np.float64), min_quantized_value, max_quantized_value)
    scaled = (clipped - min_quantized_value) / (max_quantized_value - min_quantized_value) * 255.0
    return np.rint(scaled).astype(np.uint8)


# ---------------------------------------------------------------- TFRecord framing


def masked_crc(data: bytes) -> int:
    """TFRecord's masked crc32c of ``data``."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + CRC_MASK) & 0xFFFFFFFF


def is_gzip(path: str | os.PathLike) -> bool:
    """A ``.gz`` name, or a file that starts with gzip's magic bytes."""
    if os.fspath(path).endswith(".gz"):
        return True
    with open(path, "rb") as file:
        return file.read(2) == GZIP_MAGIC


def iter_tfrecords(path: str | os.PathLike) -> Iterator[bytes]:
    """The data of each record in a TFRecord file (gzip or not), both CRCs checked.

    A short read, a bad CRC or a broken gzip stream is a :class:`YouTube8MRecordError` naming the record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TFRecord file {path}")
    opener = gzip.open if is_gzip(path) else open
    index = 0
    with opener(path, "rb") as file:
        while True:
            try:
                header = file.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise YouTube8MRecordError(path, index, f"truncated: the file ends inside the record's "
                                                            f"12-byte header ({len(header)} bytes)")
                length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
                if masked_crc(length_bytes) != length_crc:
                    raise YouTube8MRecordError(path, index, "bad length CRC (the length field is corrupt)")
                (length,) = struct.unpack("<Q", length_bytes)
                data = file.read(length)
                footer = file.read(4)
            except (EOFError, OSError, zlib.error) as exc:  # a truncated or corrupt gzip stream
                if isinstance(exc, FileNotFoundError):
                    raise
                raise YouTube8MRecordError(path, index, f"unreadable gzip stream ({type(exc).__name__}: {exc})") \
                    from None
            if len(data) < length or len(footer) < 4:
                raise YouTube8MRecordError(path, index, f"truncated: {length} data bytes and a 4-byte CRC "
                                                        f"expected, the file ends after {len(data) + len(footer)}")
            if masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise YouTube8MRecordError(path, index, "bad data CRC (the record's data is corrupt)")
            yield data
            index += 1


def frame_record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


# ---------------------------------------------------------------- reading


def read_records(path: str | os.PathLike, level: str) -> Iterator[dict]:
    """One dict per video in the TFRecord file ``path``, ``level`` ``"frame"`` or ``"video"``.

    Keys: ``id`` (str), ``labels`` (list of int in ``[0, 3862)``), ``rgb`` and ``audio``, float32 numpy arrays:
    ``(T, 1024)`` and ``(T, 128)`` dequantized at frame level (``1 <= T <= 300``), ``(1024,)`` and ``(128,)`` at
    video level. Errors: :class:`YouTube8MRecordError` naming the file and record (module docstring).
    """
    check_choice("level", level, LEVELS)
    parse = parse_frame_record if level == "frame" else parse_video_record
    for index, data in enumerate(iter_tfrecords(path)):
        try:
            yield parse(data)
        except RecordProblem as problem:
            raise YouTube8MRecordError(path, index, str(problem)) from None


class RecordProblem(Exception):
    """What is wrong with one record; :func:`read_records` adds the file and the index."""


def feature_values(features, key: str, kind: str, where: str):
    """The values of ``features[key]``, whose value list must be ``kind`` (``bytes_list``, ``int64_list``,
    ``float_list``)."""
    if key not in features:
        raise RecordProblem(f"missing feature {key!r} in the {where} (has {sorted(features)})")
    feature = features[key]
    held = feature.WhichOneof("kind")
    if held is not None and held != kind:
        raise RecordProblem(f"feature {key!r} is a {held}, expected a {kind}")
    return getattr(feature, kind).value


def parse_id(features, where: str) -> str:
    values = feature_values(features, "id", "bytes_list", where)
    if len(values) != 1:
        raise RecordProblem(f"feature 'id' holds {len(values)} values, expected 1")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RecordProblem("feature 'id' is not UTF-8 text") from None


def parse_labels(features, where: str) -> list[int]:
    labels = [int(label) for label in feature_values(features, "labels", "int64_list", where)]
    outside = [label for label in labels if not 0 <= label < NUM_CLASSES]
    if outside:
        raise RecordProblem(f"label {outside[0]} is outside [0, {NUM_CLASSES}) (the 2018 vocabulary)")
    return labels


def parse_message(message, data: bytes, name: str):
    """``message`` (an empty proto) filled from ``data``; data that is not a ``name`` is a :class:`RecordProblem`."""
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise RecordProblem(f"not a {name} ({exc})") from None
    return message


def parse_video_record(data: bytes) -> dict:
    example = parse_message(example_pb2.Example(), data, "tf.train.Example")
    features = example.features.feature
    video = {"id": parse_id(features, "example"), "labels": parse_labels(features, "example")}
    for name, key, size in (("rgb", "mean_rgb", RGB_SIZE), ("audio", "mean_audio", AUDIO_SIZE)):
        values = np.asarray(feature_values(features, key, "float_list", "example"), dtype=np.float32)
        if values.shape != (size,):
            raise RecordProblem(f"feature {key!r} holds {values.size} floats, expected {size}")
        video[name] = values
    return video


def parse_frame_record(data: bytes) -> dict:
    sequence = parse_message(example_pb2.SequenceExample(), data, "tf.train.SequenceExample")
    context = sequence.context.feature
    video = {"id": parse_id(context, "context"), "labels": parse_labels(context, "context")}
    lists = sequence.feature_lists.feature_list
    frame_counts = {}
    for name, size in (("rgb", RGB_SIZE), ("audio", AUDIO_SIZE)):
        if name not in lists:
            raise RecordProblem(f"missing feature list {name!r} (has {sorted(lists)})")
        frames = []
        for t, feature in enumerate(lists[name].feature):
            values = feature.bytes_list.value if feature.WhichOneof("kind") == "bytes_list" else None
            if values is None or len(values) != 1 or len(values[0]) != size:
                got = (f"a {feature.WhichOneof('kind')}" if values is None else
                       f"{len(values)} strings" if len(values) != 1 else f"{len(values[0])} bytes")
                raise RecordProblem(f"{name} frame {t} is {got}, expected one string of {size} bytes")
            frames.append(values[0])
        frame_counts[name] = len(frames)
        codes = np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), size)  # (T * size,) -> (T, size)
        video[name] = dequantize(codes)
    frames = frame_counts["rgb"]
    if frame_counts["audio"] != frames:
        raise RecordProblem(f"rgb has {frames} frames and audio {frame_counts['audio']}; they must match")
    if frames == 0:
        raise RecordProblem("the video has 0 frames (the rule: an empty video is an error)")
    if frames > MAX_FRAMES:
        raise RecordProblem(f"the video has {frames} frames, more than the release's cap of {MAX_FRAMES}")
    return video


# ---------------------------------------------------------------- writing


def check_video(video: dict, level: str, position: int) -> tuple[str, list[int], np.ndarray, np.ndarray]:
    """``(id, labels, rgb, audio)`` of one video to write, with the reader's rules; errors name its position."""
    where = f"video {position}"
    missing = {"id", "labels", "rgb", "audio"} - set(video)
    if missing:
        raise ValueError(f"{where} lacks {sorted(missing)}")
    labels = [int(label) for label in video["labels"]]
    if any(not 0 <= label < NUM_CLASSES for label in labels):
        raise ValueError(f"{where} ({video['id']!r}) has a label outside [0, {NUM_CLASSES}): {labels}")
    rgb, audio = (np.asarray(video[key], dtype=np.float64) for key in ("rgb", "audio"))
    if level == "video":
        if rgb.shape != (RGB_SIZE,) or audio.shape != (AUDIO_SIZE,):
            raise ValueError(f"{where} ({video['id']!r}): video level takes rgb ({RGB_SIZE},) and audio "
                             f"({AUDIO_SIZE},), got {rgb.shape} and {audio.shape}")
    else:
        if rgb.ndim != 2 or rgb.shape[1] != RGB_SIZE or audio.shape != (len(rgb), AUDIO_SIZE):
            raise ValueError(f"{where} ({video['id']!r}): frame level takes rgb (T, {RGB_SIZE}) and audio "
                             f"(T, {AUDIO_SIZE}), got {rgb.shape} and {audio.shape}")
        if not 1 <= len(rgb) <= MAX_FRAMES:
            raise ValueError(f"{where} ({video['id']!r}) has {len(rgb)} frames; the format takes 1 to {MAX_FRAMES}")
    return str(video["id"]), labels, rgb, audio


def serialize_video(video_id: str, labels: list[int], rgb: np.ndarray, audio: np.ndarray, level: str) -> bytes:
    """One record's data in the release's layout (frame level: quantized with :func:`quantize`)."""
    context = {"id": (video_id.encode("utf-8"), "byte"), "labels": (labels, "int")}
    if level == "video":
        return TFRecordWriter.serialize_tf_example({**context, "mean_rgb": (rgb.astype(np.float32).tolist(), "float"),
                                                    "mean_audio": (audio.astype(np.float32).tolist(), "float")})
    frames = {"rgb": ([frame.tobytes() for frame in quantize(rgb)], "byte"),  # (T, 1024) uint8 -> T strings
              "audio": ([frame.tobytes() for frame in quantize(audio)], "byte")}
    return TFRecordWriter.serialize_tf_sequence_example(context, frames)


def write_records(path: str | os.PathLike, videos: Iterable[dict], level: str, gzip: bool = False) -> Path:
    """Write ``videos`` (dicts as :func:`read_records` yields, float arrays) to the TFRecord file ``path``, in
    ``level``'s layout; frame-level features are quantized as the release's were (:func:`quantize`), video-level
    ones stored as float32. ``gzip=True`` compresses the file as TensorFlow's ``GZIP`` option does.

    Every video is checked first, with the reader's rules (1 to 300 frames, labels in ``[0, 3862)``, the sizes),
    then the file is written to a temporary name and renamed into place (:func:`ltcore.io.atomic_write`).
    """
    check_choice("level", level, LEVELS)
    records = [frame_record(serialize_video(*check_video(video, level, position), level))
               for position, video in enumerate(videos)]

    def write(tmp: str) -> None:
        if gzip:
            with _gzip_open(tmp, "wb") as file:
                file.writelines(records)
        else:
            Path(tmp).write_bytes(b"".join(records))

    return atomic_write(path, write)


_gzip_open = gzip.open  # the parameter ``gzip`` shadows the module inside write_records


# ---------------------------------------------------------------- the fixture

SPLITS = ("train", "validate")


def fixture_label_counts(videos: int = 40, classes: int = 12) -> dict[str, np.ndarray]:
    """Videos holding each label, head first, in each split of :func:`make_youtube8m_fixture`.

    ``train``: LDAM-DRW's exp profile (:func:`ltcore.data.longtail.longtail_counts`) from ``videos // 2`` down by
    a factor of ``min(10, videos // 2)``; ``validate`` the same for ``max(2, videos // 4)`` videos. Every video
    holds at least one label, so a split needs as many positives as videos.
    """
    videos, classes = check_int("videos", videos, low=2), check_int("classes", classes, low=2)
    if classes > NUM_CLASSES:
        raise ValueError(f"classes must be at most {NUM_CLASSES} (the 2018 vocabulary), got {classes}")
    counts = {}
    for split, total in zip(SPLITS, fixture_video_counts(videos)):
        head = max(1, total // 2)
        counts[split] = longtail_counts(head, classes, min(10, head))
        if counts[split].sum() < total:
            raise ValueError(f"{classes} classes give the {split} split {counts[split].sum()} label positives, "
                             f"fewer than its {total} videos (each needs a label): use more classes or fewer videos")
    return counts


def fixture_video_counts(videos: int) -> tuple[int, int]:
    """Videos in the train and validate splits."""
    return videos, max(2, videos // 4)


def assign_labels(counts: np.ndarray, videos: int, rng: np.random.Generator) -> list[list[int]]:
    """Each video's labels, label ``c`` on exactly ``counts[c]`` videos and every video labelled: each label, head
    first, goes to the videos holding the fewest labels so far (ties broken at random)."""
    held: list[list[int]] = [[] for _ in range(videos)]
    for label, count in enumerate(counts):
        sizes = np.array([len(labels) for labels in held])
        order = np.lexsort((rng.random(videos), sizes))  # fewest labels first, random among equals
        for video in order[:count]:
            held[video].append(label)
    return [sorted(labels) for labels in held]


def fixture_videos(labels: list[list[int]], rgb_centres: np.ndarray, audio_centres: np.ndarray,
                   rng: np.random.Generator) -> list[dict]:
    """Frame-level videos: each frame is the mean of its labels' centres plus noise; 1 to 300 frames a video, the
    first two 1 and 300, so both extremes occur."""
    videos, used = [], set()
    alphabet = np.array(list(string.ascii_letters + string.digits))
    for position, video_labels in enumerate(labels):
        frames = (1, MAX_FRAMES)[position] if position < 2 else int(rng.integers(1, MAX_FRAMES + 1))
        rgb_mean = rgb_centres[video_labels].mean(axis=0)  # (L, 1024) -> (1024,)
        audio_mean = audio_centres[video_labels].mean(axis=0)  # (L, 128) -> (128,)
        while (video_id := "".join(rng.choice(alphabet, 4))) in used:  # 4-character ids, as the 2018 release's
            pass
        used.add(video_id)
        videos.append({"id": video_id, "labels": video_labels,
                       "rgb": rgb_mean + 0.5 * rng.standard_normal((frames, RGB_SIZE)),  # (T, 1024)
                       "audio": audio_mean + 0.5 * rng.standard_normal((frames, AUDIO_SIZE))})  # (T, 128)
    return videos


def make_youtube8m_fixture(root: str | os.PathLike, videos: int = 40, classes: int = 12, shards: int = 2,
                           seed: int = 0) -> Path:
    """Write a small long-tailed multi-label YouTube-8M dataset in both layouts under ``root``; returns ``root``.

    Files: ``frame/train0000.tfrecord`` .. and ``video/train0000.tfrecord`` .. (``shards`` files a split), and the
    same for ``validate``, as the 2018 release names its shards; ``ltcore_fixture.json`` records the arguments
    (not part of the format). ``videos`` training videos and ``max(2, videos // 4)`` validation videos, each
    in both layouts with the same id and labels. Label ``c`` is on exactly ``fixture_label_counts(videos,
    classes)[split][c]`` videos (long-tailed, head first; several labels a video); the first two training videos
    have 1 and 300 frames, the others 1 to 300
    drawn uniformly. Frame features: the mean of the video's labels' random centres
    (sd 1) plus noise (sd 0.5), quantized as the release's; video-level features are the mean of the dequantized
    frames, as the release's ``mean_rgb`` / ``mean_audio`` average its frames.

    Not reproduced: the scale (3,862 classes, millions of videos, 3,844 training shards), the features' meaning
    (Inception + PCA, VGGish-like audio), the videos' lengths (about 200 frames on average), the real label
    co-occurrences and the test split (no labels). ``root`` must be new, empty, or hold this same fixture.
    """
    from ltcore.data.fixtures import check_destination, write_bytes

    seed, shards = check_int("seed", seed, low=0), check_int("shards", shards, low=1)
    counts = fixture_label_counts(videos, classes)
    if not os.fspath(root):
        raise ValueError("root is an empty path; pass the folder to write the fixture into")
    root = Path(root)
    record = {"format": "youtube8m", "videos": videos, "classes": classes, "shards": shards, "seed": seed}
    check_destination(root, record)
    write_bytes(root / FIXTURE_RECORD, (json.dumps(record, indent=2) + "\n").encode())
    rng = np.random.default_rng(seed)
    rgb_centres = rng.standard_normal((classes, RGB_SIZE))  # (C, 1024)
    audio_centres = rng.standard_normal((classes, AUDIO_SIZE))  # (C, 128)
    for split, total in zip(SPLITS, fixture_video_counts(videos)):
        frame_videos = fixture_videos(assign_labels(counts[split], total, rng), rgb_centres, audio_centres, rng)
        video_videos = [{**video, "rgb": dequantize(quantize(video["rgb"])).mean(axis=0),  # (T, 1024) -> (1024,)
                         "audio": dequantize(quantize(video["audio"])).mean(axis=0)}  # (T, 128) -> (128,)
                        for video in frame_videos]
        for shard, part in enumerate(np.array_split(np.arange(total), shards)):
            name = f"{split}{shard:04d}.tfrecord"
            write_records(root / "frame" / name, [frame_videos[i] for i in part], "frame")
            write_records(root / "video" / name, [video_videos[i] for i in part], "video")
    return root


def describe_youtube8m_fixture(root: str | os.PathLike, videos: int = 40, classes: int = 12, shards: int = 2) -> str:
    """What :func:`make_youtube8m_fixture` wrote at ``root``, split by split, and how to read it."""
    counts = fixture_label_counts(videos, classes)
    lines = [f"  {split + ':':9s} {total} videos in {shards} shards, videos per label "
             f"{' '.join(map(str, counts[split]))} (head first)"
             for split, total in zip(SPLITS, fixture_video_counts(videos))]
    lines.append(f"read it with ltcore.data.youtube8m.read_records('{Path(root) / 'frame' / 'train0000.tfrecord'}', "
                 f"'frame') (or video/..., 'video')")
    return "\n".join(lines)


def fixture_shards(root: str | os.PathLike, level: str, split: str) -> list[Path]:
    """The shard files of ``split`` at ``level`` under a fixture (or release) root, in order."""
    check_choice("level", level, LEVELS)
    return sorted((Path(root) / level).glob(f"{split}[0-9][0-9][0-9][0-9].tfrecord*"))


__all__ = ["NUM_CLASSES", "MAX_FRAMES", "YouTube8MRecordError", "dequantize", "quantize", "read_records",
           "write_records", "iter_tfrecords", "make_youtube8m_fixture", "describe_youtube8m_fixture",
           "fixture_label_counts", "fixture_shards"]
