"""ltcore.data.files: split-file parsing, paths kept inside the image root, image decoding, the default
transforms and dataset roots. The image and listing writers here serve the OLTR and iNaturalist tests too."""
from __future__ import annotations

import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from ltcore.data import files
from ltcore.data.files import (ImageEntry, ImageListDataset, check_images_exist, default_transform, parse_split_file,
                               read_class_names)

TINY = dict(image_size=8, resize_size=10)  # tiny default transforms: shorter side 10, 8 x 8 crop


def color_of(label: int) -> tuple[int, int, int]:
    return (30 + 60 * label, 200 - 50 * label, 17 * label)


def write_image(path, label, size=(14, 11), fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color_of(label)).save(path, fmt)


def write_lines(path, lines, prefix=""):
    path.write_text(prefix + "".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_png16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG, greyscale ``[H, W]`` or RGB ``[H, W, 3]``, written by hand (PIL cannot write 16-bit RGB)."""
    height, width = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))  # filter 0 + big-endian

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


# ---------------------------------------------------------------- split files


def test_parse_split_file_reads_entries_with_their_line(tmp_path):
    split = write_lines(tmp_path / "s.txt", ["a/x.jpg 0", "", "b/dir with space/y.jpg 2", "  c/z.png   1  "])
    entries = parse_split_file(split, num_classes=3)
    assert [(e.path, e.label) for e in entries] == [("a/x.jpg", 0), ("b/dir with space/y.jpg", 2), ("c/z.png", 1)]
    assert entries[1].origin == f"{split}, line 3"


@pytest.mark.parametrize("bad_line, message", [
    ("lonely_path.jpg", "malformed line"),
    ("a.jpg seven", "label 'seven' is not an integer"),
    ("a.jpg 1.0", "label '1.0' is not an integer"),
    ("a.jpg 3", "label 3 outside [0, 3)"),
    ("a.jpg -2", "label -2 outside [0, 3)"),
    ("a.jpg -1", "open-set label -1 is only allowed in an open split"),
])
def test_parse_split_file_errors_name_file_and_line(tmp_path, bad_line, message):
    split = write_lines(tmp_path / "train.txt", ["a.jpg 0", "b.jpg 1", bad_line, "c.jpg 2"])
    with pytest.raises(ValueError) as err:
        parse_split_file(split, num_classes=3)
    assert f"{split}, line 3" in str(err.value) and message in str(err.value)


def test_open_split_allows_minus_one_only(tmp_path):
    split = write_lines(tmp_path / "open.txt", ["a.jpg -1", "b.jpg 2"])
    assert [e.label for e in parse_split_file(split, num_classes=3, open_split=True)] == [-1, 2]
    write_lines(split, ["a.jpg -1", "b.jpg -2"])
    with pytest.raises(ValueError, match=r"line 2: label -2 outside \[0, 3\) or -1"):
        parse_split_file(split, num_classes=3, open_split=True)


def test_empty_and_missing_split_files(tmp_path):
    empty = write_lines(tmp_path / "empty.txt", ["", "   "])
    with pytest.raises(ValueError, match=rf"{empty}: empty split"):
        parse_split_file(empty, num_classes=3)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        parse_split_file(tmp_path / "nope.txt", num_classes=3)


def test_missing_images_are_reported_with_their_line(tmp_path):
    write_image(tmp_path / "a.png", 0)
    split = write_lines(tmp_path / "s.txt", ["a.png 0", "gone.png 1", "also_gone.png 1"])
    entries = parse_split_file(split, num_classes=2)
    with pytest.raises(FileNotFoundError) as err:
        check_images_exist(tmp_path, entries, str(split))
    message = str(err.value)
    assert "2 of 3 images" in message
    assert f"{split}, line 2: {tmp_path / 'gone.png'}" in message and f"{split}, line 3" in message
    with pytest.raises(FileNotFoundError, match="image root .* does not exist"):
        check_images_exist(tmp_path / "no_root", entries, str(split))


def test_read_class_names(tmp_path):
    names = write_lines(tmp_path / "names.txt", ["cat", "dog"])
    assert read_class_names(names, 2) == ["cat", "dog"]
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        read_class_names(names, 3)


# ---------------------------------------------------------------- hostile listings (issue 16)


@pytest.mark.hostile
@pytest.mark.parametrize("listed, message", [
    ("../outside.png", "leaves the image root"),
    ("images/../../outside.png", "leaves the image root"),
    ("..", "leaves the image root"),
    (".", "leaves the image root"),
    ("/etc/passwd", "is absolute"),
    ("OUTSIDE", "is absolute"),  # an absolute path to a file that exists
])
def test_listed_paths_stay_inside_the_root_without_touching_the_target(tmp_path, listed, message):
    outside = tmp_path / "outside.png"
    write_image(outside, 0)
    root = tmp_path / "root"
    write_image(root / "images" / "a.png", 0)
    listed = str(outside) if listed == "OUTSIDE" else listed
    split = write_lines(root / "train.txt", ["images/a.png 0", f"{listed} 0"])
    with pytest.raises(ValueError) as err:
        parse_split_file(split, num_classes=1)  # the root is not even known here: nothing can be opened
    assert f"{split}, line 2" in str(err.value) and message in str(err.value)
    assert "unreadable" not in str(err.value) and "missing" not in str(err.value)


def test_paths_that_normalise_inside_the_root_are_accepted(tmp_path):
    split = write_lines(tmp_path / "s.txt", ["images/../images/a.png 0", "./b.png 1", "c..d/e..png 0"])
    assert [e.path for e in parse_split_file(split, num_classes=2)] == ["images/../images/a.png", "./b.png",
                                                                        "c..d/e..png"]


@pytest.mark.hostile
def test_entries_built_by_hand_are_checked_too():
    with pytest.raises(ValueError, match=r"my list, item 4: image path '../x.png' leaves the image root"):
        ImageEntry("../x.png", 0, "my list, item 4")


@pytest.mark.hostile
@pytest.mark.parametrize("label", ["1_0", "\u0661", "\u0967", "+1", "\uff11"])
def test_labels_are_ascii_decimal_integers(tmp_path, label):
    split = write_lines(tmp_path / "s.txt", ["a.png 0", f"b.png {label}"])
    with pytest.raises(ValueError, match=rf"{split}, line 2: label .* is not an integer"):
        parse_split_file(split, num_classes=20)


@pytest.mark.hostile
@pytest.mark.parametrize("second, labels", [
    ("a/x.png 0", "label 0 both times"),
    ("a/x.png 1", "labels 0 and 1"),
    ("a/./x.png 1", "labels 0 and 1"),           # the same file under another spelling
])
def test_an_image_listed_twice_is_an_error_naming_both_lines(tmp_path, second, labels):
    split = write_lines(tmp_path / "s.txt", ["a/x.png 0", "b.png 1", second])
    with pytest.raises(ValueError) as err:
        parse_split_file(split, num_classes=2)
    message = str(err.value)
    assert f"{split}, line 3" in message and f"already listed at {split}, line 1" in message and labels in message


@pytest.mark.hostile
def test_a_leading_byte_order_mark_is_dropped(tmp_path):
    write_image(tmp_path / "a.png", 0)
    split = write_lines(tmp_path / "s.txt", ["a.png 0", "b.png 1"], prefix="\ufeff")
    entries = parse_split_file(split, num_classes=2)
    assert entries[0].path == "a.png"
    check_images_exist(tmp_path, entries[:1], str(split))  # found: no invisible character in the path
    names = write_lines(tmp_path / "names.txt", ["cat", "dog"], prefix="\ufeff")
    assert read_class_names(names, 2) == ["cat", "dog"]


@pytest.mark.hostile
@pytest.mark.parametrize("hidden, name", [("\ufeff", "U+FEFF"), ("\u200b", "U+200B"), ("\x07", "U+0007")])
def test_invisible_characters_inside_a_path_are_named(tmp_path, hidden, name):
    split = write_lines(tmp_path / "s.txt", ["a.png 0", f"{hidden}b.png 1"])
    with pytest.raises(ValueError, match=rf"{split}, line 2: .*invisible character {re.escape(name)}"):
        parse_split_file(split, num_classes=2)


def test_a_listing_that_is_not_utf8_names_the_file(tmp_path):
    split = tmp_path / "s.txt"
    split.write_bytes(b"caf\xe9.png 0\n")
    with pytest.raises(ValueError, match=rf"{split}: not a UTF-8 text file"):
        parse_split_file(split, num_classes=1)


# ---------------------------------------------------------------- images


def test_image_list_items_are_tensor_label_index(tmp_path):
    write_image(tmp_path / "red.png", 2)
    Image.new("L", (5, 7), 128).save(tmp_path / "gray.png")
    entries = [ImageEntry("red.png", 2, "x"), ImageEntry("gray.png", 0, "y")]
    dataset = ImageListDataset(tmp_path, entries)
    image, label, index = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 11, 14) and (label, index) == (2, 0)
    assert torch.allclose(image[:, 0, 0], torch.tensor(color_of(2)) / 255.0)
    gray, label, index = dataset[1]
    assert gray.shape == (3, 7, 5) and (label, index) == (0, 1)  # grayscale converted to RGB
    assert torch.allclose(gray, torch.full_like(gray, 128 / 255.0))
    assert dataset.labels.tolist() == [2, 0]
    resized = dataset.with_transform(default_transform(False, **TINY))
    assert resized[0][0].shape == (3, 8, 8) and len(resized) == 2


@pytest.mark.hostile
def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    write_png16(tmp_path / "grey16.png", grey)
    colour = np.zeros((1, 2, 3), np.uint16)
    colour[0, 0], colour[0, 1] = (65535, 32768, 0), (1024, 16384, 49152)
    write_png16(tmp_path / "rgb16.png", colour)
    dataset = ImageListDataset(tmp_path, [ImageEntry("grey16.png", 0, "x"), ImageEntry("rgb16.png", 0, "y")])
    image = dataset[0][0]
    assert image.shape == (3, 1, 4)
    torch.testing.assert_close(image, torch.tensor(grey / 65535.0, dtype=torch.float32).expand(3, 1, 4))
    rgb = dataset[1][0]  # PIL reduces 16-bit RGB to its high bytes: scaled, to 8-bit precision
    torch.testing.assert_close(rgb[:, 0, :].T, torch.tensor(colour[0] / 65535.0, dtype=torch.float32), atol=1 / 255,
                               rtol=0)


@pytest.mark.hostile
def test_images_without_a_fixed_range_are_refused(tmp_path):
    Image.fromarray(np.full((3, 3), 0.25, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif: 'F' image .* has no fixed value range"):
        ImageListDataset(tmp_path, [ImageEntry("float.tif", 0, "x")])[0]


def test_image_list_fingerprint_follows_files_labels_and_transform_without_decoding(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", 1)
    write_image(tmp_path / "b.png", 2)
    entries = [ImageEntry("a.png", 1, "x"), ImageEntry("b.png", 2, "y")]
    dataset = ImageListDataset(tmp_path, entries)
    first = dataset.fingerprint()
    monkeypatch.setattr(ImageListDataset, "image_tensor", lambda self, i: pytest.fail("decoded an image"))
    assert ImageListDataset(tmp_path, entries).fingerprint() == first
    assert ImageListDataset(tmp_path, [entries[0], ImageEntry("b.png", 0, "y")]).fingerprint() != first
    assert dataset.with_transform(default_transform(False, **TINY)).fingerprint() != first
    write_image(tmp_path / "b.png", 3, size=(15, 11))                   # the file changes
    assert dataset.fingerprint() != first


def test_default_transforms_sizes_and_normalize():
    image = torch.rand(3, 20, 30)
    for train in (True, False):
        assert default_transform(train, **TINY)(image).shape == (3, 8, 8)
    flat = torch.full((3, 12, 12), 0.5)
    normalized = default_transform(False, 8, 10, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))(flat)
    assert torch.allclose(normalized, torch.zeros(3, 8, 8), atol=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        default_transform(True, image_size=12, resize_size=10)
    with pytest.raises(ValueError, match="resize_size must be an integer >= 1"):
        default_transform(True, image_size=8, resize_size=10.5)


def test_truncated_and_garbage_images_raise_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    dataset = ImageListDataset(tmp_path, [ImageEntry(n, 0, n) for n in ("full.jpg", "half.jpg", "junk.png")])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert dataset[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match=r"half\.jpg: unreadable or truncated image .*truncated"):
        dataset[1]
    with pytest.raises(ValueError, match=r"junk\.png: unreadable or truncated image"):
        dataset[2]


def test_refuses_to_load_when_truncated_images_are_silently_allowed(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", 0)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES is True"):
        ImageListDataset(tmp_path, [ImageEntry("a.png", 0, "x")])[0]


# ---------------------------------------------------------------- dataset roots


def test_resolve_root_prefers_the_argument_then_the_variable_then_ltcore_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LTCORE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("LTCORE_X_ROOT", raising=False)
    default = files.resolve_root(None, "LTCORE_X_ROOT", "X")
    assert default.path == tmp_path / "data" / "X" and "LTCORE_DATA" in str(default)
    monkeypatch.setenv("LTCORE_X_ROOT", str(tmp_path))
    assert files.resolve_root(None, "LTCORE_X_ROOT", "X").path == tmp_path
    assert files.resolve_root(tmp_path / "data", "LTCORE_X_ROOT", "X", must_exist=False).path == tmp_path / "data"


@pytest.mark.hostile
def test_a_root_the_user_named_is_used_or_refused_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("LTCORE_X_ROOT", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match=r"typo \(from \$LTCORE_X_ROOT\) does not exist"):
        files.resolve_root(None, "LTCORE_X_ROOT", "X")
    with pytest.raises(FileNotFoundError, match=r"elsewhere \(from the root= argument\) does not exist"):
        files.resolve_root(tmp_path / "elsewhere", "LTCORE_X_ROOT", "X")
    with pytest.raises(ValueError, match="root= is an empty path"):
        files.resolve_root("", "LTCORE_X_ROOT", "X")
    assert os.listdir(tmp_path) == []  # nothing was created on the way
