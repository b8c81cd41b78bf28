"""Robust image reading: modes, EXIF orientation, bad files, natural order."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from d3r.scenes.images import (
    ImageReadError,
    ImageTooLargeError,
    is_image_file,
    natural_key,
    read_image,
    read_image_size,
    read_stored_size,
)


def _gradient(width: int = 6, height: int = 4) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                           np.full((height, width, 1), 40.0)], axis=2).astype(np.uint8)


def test_rgb_png_round_trips(tmp_path):
    pixels = _gradient()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out, pixels)


def test_exif_orientation_is_applied_and_size_swapped(tmp_path):
    pixels = _gradient(6, 4)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.png", exif=exif.tobytes())
    out = read_image(tmp_path / "rot.png")
    assert out.shape == (6, 4, 3)
    np.testing.assert_array_equal(out, np.rot90(pixels, k=-1))
    assert read_image_size(tmp_path / "rot.png") == (4, 6)
    assert read_image_size(tmp_path / "rot.png") == (out.shape[1], out.shape[0])


def test_grayscale_palette_cmyk(tmp_path):
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[..., 1], gray)

    Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (4, 6, 3)

    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = read_image(tmp_path / "c.jpg")
    assert red.shape == (4, 6, 3)
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60


def test_rgba_composites_on_white(tmp_path):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[:, :3] = (255, 0, 0, 255)  # opaque red left half, transparent right half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[:, :3], np.broadcast_to([255, 0, 0], (4, 3, 3)))
    np.testing.assert_array_equal(out[:, 3:], np.full((4, 3, 3), 255))


def test_16bit_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257 * 10, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 10, 255])


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"hello, not an image", "not a readable image")],
)
def test_bad_files_name_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert "bad.jpg" in str(info.value)
    with pytest.raises(ImageReadError):
        read_image_size(path)


def test_truncated_jpeg_is_reported(tmp_path):
    Image.fromarray(_gradient(64, 48)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg.*corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_natural_key_and_suffixes():
    names = ["frame_10.jpg", "frame_2.jpg", "Frame_1.jpg", "frame_100.jpg"]
    assert sorted(names, key=natural_key) == ["Frame_1.jpg", "frame_2.jpg", "frame_10.jpg", "frame_100.jpg"]
    assert is_image_file("x.JPG") and is_image_file("y.webp") and not is_image_file("notes.txt")


def test_a_symlink_loop_a_fifo_and_a_folder_are_named_for_what_they_are(tmp_path):
    os.symlink("loop.png", tmp_path / "loop.png")
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would block until a writer comes
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageReadError, match=r"loop\.png: symlink loop"):
        read_image(tmp_path / "loop.png")
    for name in ("pipe.png", "dir.png"):
        with pytest.raises(ImageReadError, match=rf"{name}: not a regular file"):
            read_image_size(tmp_path / name)


def test_a_file_the_os_refuses_to_open_says_permission_denied(tmp_path, monkeypatch):
    """Root reads any file, so PIL's open is made to meet the PermissionError an unprivileged user gets
    (tests/test_bad_inputs.py checks the kernel's answer as user nobody)."""
    Image.fromarray(_gradient()).save(tmp_path / "a.png")
    real_open = Image.open

    def refuse(fp, *args, **kwargs):
        if str(fp).endswith("a.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageReadError, match=r"a\.png: cannot read file: permission denied"):
        read_image(tmp_path / "a.png")


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_header_beyond_pils_bomb_limit_is_named_not_bare(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header(20000, 10000))  # 200M pixels in 57 bytes
    for read in (read_image, read_image_size):
        with pytest.raises(ImageTooLargeError, match=r"bomb\.png: more pixels than PIL opens .*200000000 pixels"):
            read(tmp_path / "bomb.png")
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png"):
        read_stored_size(tmp_path / "bomb.png")


def _move_exif_after_data(data: bytes) -> bytes:
    """The PNG ``data`` with its eXIf chunk moved after the image data (where PIL finds it only by decoding)."""
    start = data.index(b"eXIf") - 4
    end = start + 12 + struct.unpack(">I", data[start:start + 4])[0]
    exif, rest = data[start:end], data[:start] + data[end:]
    iend = rest.index(b"IEND") - 4
    return rest[:iend] + exif + rest[iend:]


def test_png_size_comes_from_the_header_without_decoding_unless_exif_follows_the_data(tmp_path, monkeypatch):
    pixels = _gradient(6, 4)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "early.png", exif=exif.tobytes())
    (tmp_path / "late.png").write_bytes(_move_exif_after_data((tmp_path / "early.png").read_bytes()))
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (loads.append(self.format), real_load(self))[1])
    assert read_image_size(tmp_path / "plain.png") == (6, 4)
    assert read_image_size(tmp_path / "early.png") == (4, 6)
    assert loads == []  # PIL's getexif() alone would decode both PNGs
    assert read_image_size(tmp_path / "late.png") == (4, 6) == read_image(tmp_path / "late.png").shape[1::-1]
    assert read_stored_size(tmp_path / "late.png") == (6, 4)
