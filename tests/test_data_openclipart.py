"""The Open Clip Art loader on small fake category trees written with PIL in ``tmp_path``; one test reads the real
Debian package and is skipped when it is not installed."""
from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltcore.data import openclipart
from ltcore.data.openclipart import (CATCH_ALL_FOLDERS, DEBIAN_DIR, build_openclipart_lt, decode_clipart,
                                     find_openclipart, scan_openclipart)

MODES = ("RGBA", "P", "LA", "L", "RGB")


def drawing(index: int, mode: str, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A distinct picture per ``index``: a coloured block on a transparent (or white) page, in ``mode``."""
    page = Image.new("RGBA", size, (0, 0, 0, 0))  # transparent black: white only if compositing is right
    colour = (index * 37 % 200, index * 91 % 200, 60 + index % 150, 255)
    left, top = index % 7, index % 5
    page.paste(Image.new("RGBA", (10, 9), colour), (left, top))
    page.putpixel((size[0] - 1, size[1] - 1), (index % 256, index // 256, 9, 255))  # distinct bytes per index
    if mode == "P":
        return page.convert("RGB").quantize(16)  # a palette image, opaque
    if mode in ("L", "RGB"):
        white = Image.new("RGBA", size, (255, 255, 255, 255))
        return Image.alpha_composite(white, page).convert(mode)
    return page.convert(mode)


def make_tree(root: Path, counts: dict[str, int], start: int = 0) -> Path:
    """Category folders holding ``counts[folder]`` distinct PNG drawings in mixed modes."""
    index = start
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            drawing(index, MODES[index % len(MODES)]).save(root / folder / f"picture_{index:04d}.png")
            index += 1
    return root


def write_raw_png(path: Path, pixels: np.ndarray, colour_type: int, bit_depth: int) -> Path:
    """A PNG written byte by byte (Pillow cannot write 16-bit colour): ``pixels`` is ``[H, W, C]``."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width, -1).astype(">u2" if bit_depth == 16 else "u1")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(openclipart.PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "png", {"tools": 15, "animals/cats": 12, "animals/dogs": 10, "tiny": 3})


def build(root, tmp_path, **options):
    settings = dict(image_size=16, min_images=10, test_per_class=3, val_per_class=1, exclude=(),
                    cache_dir=tmp_path / "cache", progress=False)
    return build_openclipart_lt(root, **{**settings, **options})


# --- splits -----------------------------------------------------------------------------------------------------

def test_splits_are_balanced_head_first_and_disjoint(tree, tmp_path):
    splits = build(tree, tmp_path)
    assert splits.name == "openclipart_lt"
    assert splits.class_names == ["tools", "animals/cats", "animals/dogs"]  # head first; "tiny" has 3 < 10
    assert splits.class_counts.tolist() == [11, 8, 6]  # pictures - 3 test - 1 val
    assert np.bincount(splits.test.labels).tolist() == [3, 3, 3]
    assert np.bincount(splits.val.labels).tolist() == [1, 1, 1]
    assert splits.train.images.shape == (25, 16, 16, 3) and splits.train.images.dtype == np.uint8
    held = [set(split.source_indices.tolist()) for split in (splits.train, splits.val, splits.test)]
    assert not (held[0] & held[1]) and not (held[0] & held[2]) and not (held[1] & held[2])
    image, label, index = splits.test[0]
    assert image.shape == (3, 16, 16) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert splits.summary()["head"] == 11 and splits.summary()["tail"] == 6


def test_source_indices_point_at_the_scanned_files(tree, tmp_path):
    splits = build(tree, tmp_path, augment=False)
    inventory = scan_openclipart(tree, min_images=10, exclude=())
    for split in (splits.train, splits.test):
        for row in (0, len(split) - 1):
            relative = inventory.files[split.source_indices[row]]
            assert np.array_equal(split.images[row], decode_clipart(tree / relative, 16))
            assert splits.class_names[split.labels[row]] == Path(relative).parent.as_posix()


def test_a_seed_gives_the_same_splits_and_another_seed_other_ones(tree, tmp_path):
    first, again, other = (build(tree, tmp_path, seed=seed) for seed in (3, 3, 4))
    assert np.array_equal(first.test.source_indices, again.test.source_indices)
    assert not np.array_equal(first.test.source_indices, other.test.source_indices)


def test_augmentation_flips_and_never_draws_black_bars(tree, tmp_path):
    splits = build(tree, tmp_path)
    plain = splits.train.with_transform(None)
    for i in range(len(splits.train)):
        image, original = splits.train[i][0], plain[i][0]
        assert torch.equal(image, original) or torch.equal(image, original.flip(-1))


def test_no_validation_split_when_val_per_class_is_zero(tree, tmp_path):
    splits = build(tree, tmp_path, val_per_class=0)
    assert splits.val is None and splits.class_counts.tolist() == [12, 9, 7]


# --- decoding rules -----------------------------------------------------------------------------------------------

def square(mode: str, background, centre) -> Image.Image:
    image = Image.new(mode, (8, 8), background)
    image.paste(Image.new(mode, (4, 4), centre), (2, 2))
    return image


@pytest.mark.parametrize("mode, background, centre, expected_centre", [
    ("RGBA", (0, 0, 0, 0), (200, 10, 20, 255), (200, 10, 20)),  # transparent black page -> white, not black
    ("RGBA", (0, 0, 0, 0), (255, 0, 0, 128), (255, 127, 127)),  # half-transparent red over white
    ("LA", (0, 0), (50, 255), (50, 50, 50)),
    ("L", 255, 80, (80, 80, 80)),
    ("RGB", (255, 255, 255), (1, 2, 3), (1, 2, 3)),
    ("1", 1, 0, (0, 0, 0)),
])
def test_modes_are_composited_onto_white(tmp_path, mode, background, centre, expected_centre):
    path = tmp_path / "picture.png"
    square(mode, background, centre).save(path)
    pixels = decode_clipart(path, 8)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert np.abs(pixels[4, 4].astype(int) - expected_centre).max() <= 1


@pytest.mark.parametrize("mode, background, centre, transparency", [
    ("P", 0, 1, 0),  # palette index 0 transparent (tRNS)
    ("L", 0, 90, 0),  # grey value 0 transparent
    ("RGB", (0, 0, 0), (90, 90, 90), (0, 0, 0)),  # colour (0, 0, 0) transparent
])
def test_a_transparent_colour_becomes_white(tmp_path, mode, background, centre, transparency):
    image = square(mode, background, centre)
    if mode == "P":
        image.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
    path = tmp_path / "picture.png"
    image.save(path, transparency=transparency)
    pixels = decode_clipart(path, 8)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[4, 4].tolist() == [90, 90, 90]


@pytest.mark.hostile
def test_sixteen_bit_pictures_are_scaled_not_clipped(tmp_path):
    grey = np.full((8, 8), 32896, np.uint16)  # 32896 / 65535 * 255 = 128
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    rgba = np.zeros((8, 8, 4), np.uint16)
    rgba[2:6, 2:6] = (65535, 32896, 0, 65535)
    write_raw_png(tmp_path / "rgba16.png", rgba, colour_type=6, bit_depth=16)
    grey_alpha = np.zeros((8, 8, 2), np.uint16)
    grey_alpha[2:6, 2:6] = (16448, 65535)  # 64 / 255, opaque
    write_raw_png(tmp_path / "la16.png", grey_alpha, colour_type=4, bit_depth=16)
    assert decode_clipart(tmp_path / "grey16.png", 8)[0, 0].tolist() == [128, 128, 128]
    assert decode_clipart(tmp_path / "rgba16.png", 8)[4, 4].tolist() == [255, 128, 0]
    assert decode_clipart(tmp_path / "rgba16.png", 8)[0, 0].tolist() == [255, 255, 255]
    assert decode_clipart(tmp_path / "la16.png", 8)[4, 4].tolist() == [64, 64, 64]


def test_pages_are_letterboxed_not_stretched(tmp_path):
    Image.new("L", (40, 10), 0).save(tmp_path / "wide.png")
    pixels = decode_clipart(tmp_path / "wide.png", 20)  # 40 x 10 -> 20 x 5, centred
    assert (pixels[8:12] < 10).all() and (pixels[:6] == 255).all() and (pixels[14:] == 255).all()


def test_large_pages_are_reduced_like_small_ones(tmp_path):
    """The box reduction in premultiplied colour gives what compositing at full size gives."""
    page = np.zeros((240, 240, 4), np.uint8)
    page[60:180, 60:180] = (0, 0, 255, 255)
    page[100:140, :] = (255, 0, 0, 100)
    Image.fromarray(page, "RGBA").save(tmp_path / "large.png")
    reduced = decode_clipart(tmp_path / "large.png", 8)  # 240 >= 2 * REDUCING_GAP * 8: box-reduced first
    white = Image.new("RGBA", (240, 240), (255, 255, 255, 255))
    full = openclipart.letterbox(Image.alpha_composite(white, Image.fromarray(page, "RGBA")).convert("RGB"), 8)
    assert np.abs(reduced.astype(int) - full.astype(int)).max() <= 1


# --- duplicates, exclusions, blanks, sizes --------------------------------------------------------------------------

def test_copies_under_two_labels_are_dropped_and_copies_under_one_label_kept_once(tree, tmp_path):
    shared = tree / "tools" / "picture_0000.png"
    (tree / "animals/cats" / "copy_of_a_tool.png").write_bytes(shared.read_bytes())
    os.symlink("picture_0015.png", tree / "animals/cats" / "linked_cat.png")  # same label: keep one
    (tree / "animals/cats" / "zz_same_cat.png").write_bytes((tree / "animals/cats/picture_0016.png").read_bytes())
    inventory = scan_openclipart(tree, min_images=10, exclude=())
    assert inventory.conflicting == (("animals/cats/copy_of_a_tool.png", "tools/picture_0000.png"),)
    assert inventory.same_label_copies == ("animals/cats/picture_0015.png", "animals/cats/zz_same_cat.png")
    assert "animals/cats/linked_cat.png" in inventory.files and "animals/cats/picture_0016.png" in inventory.files
    assert dict(zip(inventory.class_names, inventory.class_counts.tolist())) == \
        {"tools": 14, "animals/cats": 12, "animals/dogs": 10}
    assert len(set(inventory.digests)) == len(inventory.digests)


def test_exclude_patterns_drop_a_folder_and_what_is_below(tree):
    inventory = scan_openclipart(tree, min_images=1, exclude=("animals*",))
    assert inventory.class_names == ("tools", "tiny")
    assert inventory.excluded == {"animals/cats": 12, "animals/dogs": 10}


def test_the_default_exclusions_apply_where_the_tree_has_them(tmp_path):
    root = make_tree(tmp_path / "png", {"shapes/stars": 20, "computer/icons/lemon-theme": 11, "food/fruit": 10})
    inventory = scan_openclipart(root)
    assert inventory.class_names == ("food/fruit",)
    assert "shapes*" in CATCH_ALL_FOLDERS and set(inventory.excluded) == {"shapes/stars", "computer/icons/lemon-theme"}


def test_pictures_in_the_root_belong_to_no_class(tree):
    drawing(900, "RGBA").save(tree / "loose.png")
    inventory = scan_openclipart(tree, min_images=10, exclude=())
    assert inventory.excluded == {".": 1} and "loose.png" not in inventory.files


def test_blank_pictures_are_dropped_with_a_warning(tree, tmp_path):
    Image.new("RGBA", (20, 20), (255, 255, 255, 0)).save(tree / "animals/dogs" / "invisible.png")
    with pytest.warns(UserWarning, match=r"1 blank picture.*animals/dogs/invisible\.png"):
        splits = build(tree, tmp_path)
    assert splits.class_counts.tolist() == [11, 8, 6]


def test_a_class_left_under_min_images_by_blank_pictures_is_dropped(tree, tmp_path):
    for i in range(2):
        Image.new("LA", (20 + i, 20), (0, 0)).save(tree / "tiny" / f"empty_{i}.png")  # distinct bytes
    drawing(950, "RGBA").save(tree / "tiny" / "more.png")  # tiny: 4 drawings + 2 blanks = 6 files
    with pytest.warns(UserWarning, match="2 blank"):
        splits = build(tree, tmp_path, min_images=6, test_per_class=2, val_per_class=1)
    assert "tiny" not in splits.class_names


def test_oversized_pictures_are_skipped_with_a_warning_naming_them(tree, tmp_path):
    drawing(901, "RGBA", size=(60, 50)).save(tree / "tools" / "huge.png")
    with pytest.warns(UserWarning, match=r"skipped 1 picture.*tools/huge\.png \(60 x 50\)"):
        splits = build(tree, tmp_path, max_pixels=2_000)
    assert splits.class_counts[0] == 11
    with pytest.raises(ValueError, match=r"huge\.png: 60 x 50 = 3,000 pixels exceeds max_pixels = 2,000"):
        decode_clipart(tree / "tools" / "huge.png", 16, max_pixels=2_000)


@pytest.mark.hostile
def test_pillows_decompression_bomb_guard_is_an_error_naming_the_file(tmp_path, monkeypatch):
    Image.new("1", (300, 300), 1).save(tmp_path / "bomb.png")  # 90,000 pixels in a few hundred bytes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(ValueError, match=r"bomb\.png: 300 x 300 pixels is refused by Pillow's decompression-bomb"):
        decode_clipart(tmp_path / "bomb.png", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # half Pillow's limit only warns; max_pixels already judged the size
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)
        assert decode_clipart(tmp_path / "bomb.png", 16).shape == (16, 16, 3)


# --- bad files, roots and arguments -------------------------------------------------------------------------------

@pytest.mark.hostile
@pytest.mark.parametrize("damage, message", [
    ("text", r"not_a_png\.png: not a PNG file"),
    ("truncated", r"not_a_png\.png: unreadable or truncated PNG"),
])
def test_damaged_files_are_errors_naming_them(tree, tmp_path, damage, message):
    path = tree / "tools" / "not_a_png.png"
    good = (tree / "tools" / "picture_0001.png").read_bytes()
    path.write_bytes(b"GIF89a, not a drawing at all" if damage == "text" else good[: len(good) // 2])
    with pytest.raises(ValueError, match=message):
        build(tree, tmp_path)


@pytest.mark.hostile
def test_a_broken_link_or_a_fifo_is_an_error_naming_it(tree):
    os.symlink("nowhere.png", tree / "tools" / "dangling.png")
    with pytest.raises(FileNotFoundError, match=r"dangling\.png: broken symlink"):
        scan_openclipart(tree, exclude=())
    os.remove(tree / "tools" / "dangling.png")
    os.mkfifo(tree / "tools" / "pipe.png")  # reading it would block forever
    with pytest.raises(ValueError, match=r"pipe\.png: not a regular file"):
        scan_openclipart(tree, exclude=())


@pytest.mark.hostile
def test_a_named_root_without_drawings_is_an_error_never_a_fallback(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    (empty / "folder").mkdir(parents=True)
    monkeypatch.setenv(openclipart.ENV_VAR, str(empty))
    with pytest.raises(FileNotFoundError, match=rf"{empty} \(from \$LTCORE_OPENCLIPART\) holds no \.png"):
        find_openclipart()
    monkeypatch.setenv(openclipart.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"missing \(from \$LTCORE_OPENCLIPART\) does not exist.*"
                                                r"apt-get install openclipart-png"):
        find_openclipart()
    with pytest.raises(FileNotFoundError, match=r"missing \(from the root= argument\) does not exist"):
        find_openclipart(tmp_path / "missing")


def test_the_environment_variable_names_the_root(tree, monkeypatch):
    monkeypatch.setenv(openclipart.ENV_VAR, str(tree))
    assert find_openclipart() == tree
    monkeypatch.delenv(openclipart.ENV_VAR)
    monkeypatch.setattr(openclipart, "DEBIAN_DIR", tree.parent / "not_installed")
    with pytest.raises(FileNotFoundError, match="Debian package openclipart-png.*apt-get install openclipart-png"):
        find_openclipart()


@pytest.mark.parametrize("options, error, message", [
    ({"min_images": 4, "test_per_class": 3, "val_per_class": 1}, ValueError, r"min_images \(4\) must exceed"),
    ({"image_size": 0}, ValueError, "image_size must be an integer >= 1"),
    ({"test_per_class": 0}, ValueError, "test_per_class must be an integer >= 1"),
    ({"val_per_class": -1}, ValueError, "val_per_class must be an integer >= 0"),
    ({"seed": -1}, ValueError, "seed must be an integer"),
    ({"max_pixels": 0}, ValueError, "max_pixels must be an integer >= 1"),
    ({"min_images": 100}, ValueError, "no class of .* has min_images = 100"),
    ({"exclude": "tools"}, TypeError, r"single string 'tools'; write \('tools',\)"),
    ({"exclude": ("tool",)}, ValueError, r"exclude pattern 'tool' matches no folder"),
    ({"root": ""}, ValueError, "root= is an empty path"),
])
def test_bad_arguments_are_errors_naming_them(tree, tmp_path, options, error, message):
    options = {"root": tree, **options}
    with pytest.raises(error, match=message):
        build(options.pop("root"), tmp_path, **options)


# --- cache --------------------------------------------------------------------------------------------------------

def test_a_second_build_reads_the_cache_without_decoding(tree, tmp_path, monkeypatch):
    first = build(tree, tmp_path, augment=False)
    monkeypatch.setattr(openclipart, "decode_clipart", lambda *args, **kwargs: pytest.fail("decoded again"))
    second = build(tree, tmp_path, augment=False)
    assert np.array_equal(first.train.images, second.train.images)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]


def test_the_cache_is_keyed_by_the_files_and_the_size(tree, tmp_path):
    build(tree, tmp_path)
    build(tree, tmp_path, image_size=12)
    drawing(999, "RGBA").save(tree / "tools" / "new.png")
    build(tree, tmp_path)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


class RunsCode:
    """Unpickling it creates the file ``marker``: the stand-in for a payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.hostile
@pytest.mark.parametrize("content", ["garbage", "payload", "other_files"])
def test_a_damaged_or_crafted_cache_is_rebuilt_and_runs_nothing(tree, tmp_path, content):
    marker = tmp_path / "code_ran"
    first = build(tree, tmp_path, augment=False)
    (cache,) = (tmp_path / "cache").glob("*.npz")
    if content == "garbage":
        cache.write_bytes(b"PK\x03\x04 not a zip")
    elif content == "payload":
        with open(cache, "wb") as handle:
            np.savez(handle, images=np.array([RunsCode(marker)], dtype=object), files=np.array(["x"]),
                     digests=np.array(["y"]))
    else:
        with open(cache, "wb") as handle:
            np.savez(handle, images=np.zeros((1, 16, 16, 3), np.uint8), files=np.array(["x"]), digests=np.array(["y"]))
    with pytest.warns(RuntimeWarning, match=rf"openclipart cache {cache} .*rebuilt and overwritten"):
        again = build(tree, tmp_path, augment=False)
    assert not marker.exists()
    assert np.array_equal(first.test.images, again.test.images)
    with np.load(cache, allow_pickle=False) as rewritten:
        assert rewritten["images"].dtype == np.uint8


# --- the real package ---------------------------------------------------------------------------------------------

real_package = pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="needs `apt-get install openclipart-png`")


@real_package
def test_the_debian_package_scans_into_object_classes():
    inventory = scan_openclipart()
    counts = dict(zip(inventory.class_names, inventory.class_counts.tolist()))
    assert len(counts) >= 30 and min(counts.values()) >= 10 and max(counts.values()) < 150
    assert not any(name.startswith(("shapes", "computer/icons", "signs_and_symbols/flags", "special", "unsorted"))
                   for name in counts)
    assert inventory.conflicting and inventory.same_label_copies and not inventory.oversized
    first = inventory.root / inventory.files[0]
    assert decode_clipart(first, 32).shape == (32, 32, 3)


@real_package
@pytest.mark.slow
def test_the_debian_package_builds(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the blank pictures are named in a warning
        splits = build_openclipart_lt(cache_dir=tmp_path, progress=False)
    assert splits.num_classes >= 30 and (np.bincount(splits.test.labels) == 5).all()
    assert splits.class_counts.min() >= 1
