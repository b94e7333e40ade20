"""ltcore.data.youtube8m: both layouts round-trip (gzip too), the sharded fixture reads back long-tailed and
multi-label, every corrupt record is an error naming the file and the record, the 300-frame and empty-video rules,
and ``python -m ltcore data make-fixture youtube8m``."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from tfrecord.writer import TFRecordWriter

from ltcore.__main__ import main
from ltcore.data.youtube8m import (MAX_FRAMES, NUM_CLASSES, YouTube8MRecordError, dequantize, fixture_label_counts,
                                   fixture_shards, frame_record, make_youtube8m_fixture, quantize, read_records,
                                   write_records)

STEP = 4 / 255  # one quantization step of [-2, 2] in 8 bits


def random_videos(level, count=3, seed=0):
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(count):
        frames = [1, 7, MAX_FRAMES][i % 3]
        shape = {"rgb": (frames, 1024), "audio": (frames, 128)} if level == "frame" else {"rgb": (1024,),
                                                                                            "audio": (128,)}
        videos.append({"id": f"v{i:03d}", "labels": sorted(rng.choice(NUM_CLASSES, i + 1, replace=False).tolist()),
                       **{key: rng.uniform(-2.5, 2.5, size) for key, size in shape.items()}})
    return videos


def sequence_data(rgb_frames, audio_frames, labels=(1,), video_id=b"abcd", drop=None):
    context = {"id": (video_id, "byte"), "labels": (list(labels), "int")}
    lists = {"rgb": (rgb_frames, "byte"), "audio": (audio_frames, "byte")}
    for name in [drop] if drop else []:
        context.pop(name, None)
        lists.pop(name, None)
    return TFRecordWriter.serialize_tf_sequence_example(context, lists)


def example_data(rgb=1024, audio=128, labels=(1,), drop=None):
    datum = {"id": (b"abcd", "byte"), "labels": (list(labels), "int"), "mean_rgb": ([0.5] * rgb, "float"),
             "mean_audio": ([0.25] * audio, "float")}
    datum.pop(drop, None)
    return TFRecordWriter.serialize_tf_example(datum)


def good_frame_data(frames=2):
    return sequence_data([bytes(1024)] * frames, [bytes(128)] * frames)


# ---------------------------------------------------------------- round trips


def test_quantize_is_the_inverse_of_the_starter_codes_dequantize():
    codes = np.arange(256, dtype=np.uint8)
    assert dequantize(codes)[[0, 255]].tolist() == pytest.approx([-2 + 4 / 512, 2 + 4 / 512])
    np.testing.assert_array_equal(quantize(dequantize(codes)), codes)
    x = np.linspace(-2, 2, 10001)
    assert np.abs(dequantize(quantize(x)) - x).max() < STEP


def test_frame_level_round_trip_is_within_one_quantization_step(tmp_path):
    videos = random_videos("frame")
    path = write_records(tmp_path / "train0000.tfrecord", videos, "frame")
    read = list(read_records(path, "frame"))
    assert [(v["id"], v["labels"]) for v in read] == [(v["id"], v["labels"]) for v in videos]
    for original, back in zip(videos, read):
        for key, size in (("rgb", 1024), ("audio", 128)):
            assert back[key].dtype == np.float32 and back[key].shape == (len(original["rgb"]), size)
            assert np.abs(back[key] - np.clip(original[key], -2, 2)).max() < STEP
    again = write_records(tmp_path / "again.tfrecord", read, "frame")  # dequantized values keep their codes
    assert again.read_bytes() == path.read_bytes()


def test_video_level_round_trip_is_exact(tmp_path):
    videos = [{**v, "rgb": v["rgb"].astype(np.float32), "audio": v["audio"].astype(np.float32)}
              for v in random_videos("video")]
    read = list(read_records(write_records(tmp_path / "train0000.tfrecord", videos, "video"), "video"))
    for original, back in zip(videos, read):
        assert (back["id"], back["labels"]) == (original["id"], original["labels"])
        assert back["rgb"].shape == (1024,) and back["audio"].shape == (128,) and back["rgb"].dtype == np.float32
        np.testing.assert_array_equal(back["rgb"], original["rgb"])
        np.testing.assert_array_equal(back["audio"], original["audio"])


@pytest.mark.parametrize("name", ["train0000.tfrecord.gz", "train0000.tfrecord"])  # by suffix, by magic bytes
@pytest.mark.parametrize("level", ["frame", "video"])
def test_gzip_files_read_back_the_same(tmp_path, name, level):
    videos = random_videos(level)
    plain = list(read_records(write_records(tmp_path / "plain.tfrecord", videos, level), level))
    path = write_records(tmp_path / name, videos, level, gzip=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    zipped = list(read_records(path, level))
    assert [v["id"] for v in zipped] == [v["id"] for v in plain]
    for a, b in zip(zipped, plain):
        np.testing.assert_array_equal(a["rgb"], b["rgb"])


# ---------------------------------------------------------------- the fixture


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_youtube8m_fixture(tmp_path_factory.mktemp("yt8m") / "root")


def read_split(root, level, split):
    return [video for shard in fixture_shards(root, level, split) for video in read_records(shard, level)]


@pytest.mark.parametrize("split, videos", [("train", 40), ("validate", 10)])
def test_fixture_reads_back_long_tailed_multi_label_and_sharded(fixture_root, split, videos):
    assert [p.name for p in fixture_shards(fixture_root, "frame", split)] == [f"{split}0000.tfrecord",
                                                                              f"{split}0001.tfrecord"]
    frame, video = read_split(fixture_root, "frame", split), read_split(fixture_root, "video", split)
    assert len(frame) == len(video) == videos and len({v["id"] for v in frame}) == videos
    assert [(v["id"], v["labels"]) for v in frame] == [(v["id"], v["labels"]) for v in video]
    expected = fixture_label_counts()[split]
    counts = np.bincount([label for v in frame for label in v["labels"]], minlength=12)
    assert counts.tolist() == expected.tolist() and counts[0] >= 5 * counts[-1]
    assert all(v["labels"] for v in frame) and any(len(v["labels"]) > 1 for v in frame)
    for f, v in zip(frame, video):  # video level is the mean of the frames
        np.testing.assert_allclose(v["rgb"], f["rgb"].mean(axis=0), atol=1e-5)


def test_fixture_frame_counts_span_the_format_and_features_follow_the_labels(fixture_root):
    frame = read_split(fixture_root, "frame", "train")
    lengths = [len(v["rgb"]) for v in frame]
    assert min(lengths) == 1 and max(lengths) == MAX_FRAMES and len(set(lengths)) > 10
    video = read_split(fixture_root, "video", "train")
    with_head = np.array([0 in v["labels"] for v in video])
    means = np.stack([v["rgb"] for v in video])  # (N, 1024)
    centre = means[with_head].mean(axis=0) - means[~with_head].mean(axis=0)  # (1024,)
    scores = means @ centre  # (N,)
    assert scores[with_head].min() > scores[~with_head].max()  # the head label is linearly separable


def test_fixture_is_deterministic_and_refuses_a_full_folder(tmp_path, fixture_root):
    root = make_youtube8m_fixture(tmp_path / "again")
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(fixture_root) for p in fixture_root.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (fixture_root / f).read_bytes() for f in files)
    with pytest.raises(FileExistsError, match="already holds another fixture"):
        make_youtube8m_fixture(root, seed=1)
    with pytest.raises(ValueError, match="fewer than its 40 videos"):
        make_youtube8m_fixture(tmp_path / "small", classes=2)


# ---------------------------------------------------------------- corrupt records


def corrupt_file(tmp_path, how):
    """A file whose record 0 is good and record 1 is broken ``how``; returns (path, level)."""
    good = frame_record(good_frame_data())
    bad = {
        "missing rgb": ("frame", sequence_data([], [bytes(128)], drop="rgb")),
        "missing labels": ("frame", sequence_data([bytes(1024)], [bytes(128)], drop="labels")),
        "missing mean_audio": ("video", example_data(drop="mean_audio")),
        "short rgb frame": ("frame", sequence_data([bytes(1024), bytes(1000)], [bytes(128)] * 2)),
        "short mean_rgb": ("video", example_data(rgb=1000)),
        "label 3862": ("frame", sequence_data([bytes(1024)], [bytes(128)], labels=(5, NUM_CLASSES))),
        "label -1": ("video", example_data(labels=(-1,))),
        "frames differ": ("frame", sequence_data([bytes(1024)] * 2, [bytes(128)] * 3)),
        "301 frames": ("frame", sequence_data([bytes(1024)] * 301, [bytes(128)] * 301)),
        "0 frames": ("frame", sequence_data([], [])),
        "not a proto": ("video", b"\xff\xff\xff\xff"),
    }
    level, data = bad.get(how, ("frame", good_frame_data()))
    if level == "video":
        good = frame_record(example_data())
    second = bytearray(frame_record(data))
    if how == "flipped data byte":
        second[20] ^= 0x01
    if how == "flipped length byte":
        second[0] ^= 0x01
    content = good + bytes(second)
    if how == "truncated":
        content = content[:-10]
    if how == "truncated header":
        content = good + bytes(second[:5])
    path = tmp_path / ("train0000.tfrecord.gz" if how == "truncated gzip" else "train0000.tfrecord")
    if how == "truncated gzip":
        path.write_bytes(gzip.compress(content)[:-30])
    else:
        path.write_bytes(content)
    return path, level


@pytest.mark.parametrize("how, says", [
    ("truncated", "truncated"),
    ("truncated header", "truncated: the file ends inside the record's 12-byte header"),
    ("truncated gzip", "unreadable gzip stream"),
    ("flipped data byte", "bad data CRC"),
    ("flipped length byte", "bad length CRC"),
    ("missing rgb", "missing feature list 'rgb'"),
    ("missing labels", "missing feature 'labels' in the context"),
    ("missing mean_audio", "missing feature 'mean_audio' in the example"),
    ("short rgb frame", "rgb frame 1 is 1000 bytes, expected one string of 1024 bytes"),
    ("short mean_rgb", "feature 'mean_rgb' holds 1000 floats, expected 1024"),
    ("label 3862", "label 3862 is outside [0, 3862)"),
    ("label -1", "label -1 is outside [0, 3862)"),
    ("frames differ", "rgb has 2 frames and audio 3"),
    ("301 frames", "the video has 301 frames, more than the release's cap of 300"),
    ("0 frames", "the video has 0 frames"),
    ("not a proto", "not a tf.train.Example"),
])
def test_a_corrupt_record_is_an_error_naming_the_file_and_the_record(tmp_path, how, says):
    path, level = corrupt_file(tmp_path, how)
    records = read_records(path, level)
    if how != "truncated gzip":  # gzip may fail before the first record is out
        assert next(records)["id"] == "abcd"
    with pytest.raises(YouTube8MRecordError, match=re.escape(f"{path}: record ")) as error:
        list(records)
    assert isinstance(error.value, ValueError) and says in str(error.value)
    assert error.value.path == str(path)
    if how != "truncated gzip":
        assert error.value.index == 1 and f"{path}: record 1: " in str(error.value)


@pytest.mark.parametrize("frames, says", [(0, "has 0 frames; the format takes 1 to 300"),
                                          (301, "has 301 frames; the format takes 1 to 300")])
def test_the_writer_keeps_the_frame_rules_and_writes_nothing(tmp_path, frames, says):
    video = {"id": "abcd", "labels": [1], "rgb": np.zeros((frames, 1024)), "audio": np.zeros((frames, 128))}
    with pytest.raises(ValueError, match=re.escape(says)):
        write_records(tmp_path / "out.tfrecord", [video], "frame")
    with pytest.raises(ValueError, match=re.escape("has a label outside [0, 3862)")):
        write_records(tmp_path / "out.tfrecord", [{**video, "labels": [NUM_CLASSES]}], "video")
    assert not (tmp_path / "out.tfrecord").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=re.escape("level must be one of ['frame', 'video'], got 'clip'")):
        next(read_records(tmp_path / "x", "clip"))
    with pytest.raises(FileNotFoundError, match="no TFRecord file"):
        next(read_records(tmp_path / "missing.tfrecord", "frame"))


# ---------------------------------------------------------------- the command line


def test_cli_writes_the_youtube8m_fixture(tmp_path, capsys):
    root = tmp_path / "yt8m"
    assert main(["data", "make-fixture", "youtube8m", str(root), "--max-per-class", "6", "--classes", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote the youtube8m fixture (seed 0) to {root}\n")
    assert "train:    12 videos in 2 shards, videos per label 6 3 2 1 1 (head first)" in out
    videos = read_split(root, "frame", "train")
    assert len(videos) == 12 and np.bincount([l for v in videos for l in v["labels"]]).tolist() == [6, 3, 2, 1, 1]
    assert len(read_split(root, "video", "validate")) == 3


def test_cli_youtube8m_mistake_is_one_line_and_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "make-fixture", "youtube8m", str(tmp_path / "out"), "--classes", "2"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "fewer than its 40 videos" in err
    assert not (tmp_path / "out").exists()
