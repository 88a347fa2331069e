"""Calibration image source: formats, broken files, huge files, bad folders."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import photo
from PIL import Image

from effedge.quantize.images import DEFAULT_CALIB_DIR, MIN_HOLDOUT_VIEWS, HeldOutView, ImageSet, find_images
from effedge.runtime.images import load_rgb
from effedge.errors import EffedgeError
from effedge.runtime.preprocess import MEAN_PIXEL, letterbox




def test_modes_are_converted_to_rgb8(tmp_path):
    rgb = photo()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner becomes the letterbox colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "gray16.png")
    Image.fromarray(rgb).save(tmp_path / "photo.webp")
    Image.fromarray(rgb).save(tmp_path / "photo.bmp")
    Image.fromarray(rgb).save(tmp_path / "photo.tiff")

    assert np.array_equal(load_rgb(tmp_path / "rgb.png"), rgb)
    gray = load_rgb(tmp_path / "gray.png")
    assert gray.shape == (64, 96, 3) and np.array_equal(gray[..., 1], rgb[..., 0])
    assert tuple(load_rgb(tmp_path / "rgba.png")[0, 0]) == MEAN_PIXEL
    assert load_rgb(tmp_path / "palette.png").shape == (64, 96, 3)
    sixteen = load_rgb(tmp_path / "gray16.png")  # 16-bit scaled to 8-bit, not clipped at 255
    assert np.abs(sixteen[..., 0].astype(int) - rgb[..., 0]).max() <= 1
    for name in ("photo.webp", "photo.bmp", "photo.tiff"):
        assert load_rgb(tmp_path / name).dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(photo((96, 64)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").shape == (96, 64, 3)


def test_letterbox_keeps_aspect_at_top_left():
    canvas, scale = letterbox(photo((100, 50)), 64, 64)
    assert scale == pytest.approx(0.64)
    assert canvas.shape == (64, 64, 3)
    assert (canvas[40:, :] == MEAN_PIXEL).all() and not (canvas[:30, :] == MEAN_PIXEL).all()


def test_huge_image_is_reduced_while_decoding(tmp_path):
    """A 10000×10000 image must not exhaust memory: decoded in a subprocess, peak RSS stays small."""
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (10000, 10000), (200, 30, 30)).save(path, quality=50)
    # The decode's own peak-RSS growth, from the process's VmHWM (reset by exec, unlike ru_maxrss, which keeps the
    # forking parent's peak): a full decode needs 300 MB for the RGB pixels alone; the reduced one far less.
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc/self/status to read the decode's peak memory")
    code = ("import sys; from pathlib import Path; from PIL import Image; from effedge.runtime.images import load_rgb; "
            "hwm = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]); "
            "before = hwm(); a = load_rgb(Path(sys.argv[1]), (512, 512)); "
            "print(a.shape[0], a.shape[1], (hwm() - before) // 1024)")
    height, width, growth_mb = map(int, subprocess.check_output([sys.executable, "-c", code, str(path)]).split())
    assert max(height, width) <= 2048 and growth_mb < 200, (height, width, growth_mb)


def _folder(tmp_path, count=12):
    for i in range(count):
        Image.fromarray(photo(seed=i)).save(tmp_path / f"img{i:02d}.jpg")
    return tmp_path


def test_deterministic_subset_holdout_and_hash(tmp_path):
    folder = _folder(tmp_path)
    (folder / "notes.txt").write_text("not an image")
    nested = folder / "more"
    nested.mkdir()
    Image.fromarray(photo(seed=99)).save(nested / "deep.png")
    first = ImageSet.from_folder(folder, count=5, holdout=3)
    again = ImageSet.from_folder(folder, count=5, holdout=3)
    assert first.calibration == again.calibration and first.holdout == again.holdout
    assert len(first.calibration) == 5 and len(first.holdout) == 3
    assert not set(first.calibration) & set(first.holdout)
    assert len(find_images(folder)) == 13  # recursive, the .txt ignored
    assert first.content_hash() == again.content_hash()
    assert ImageSet.from_folder(folder, count=6, holdout=3).content_hash() != first.content_hash()


def test_held_out_views_multiply_only_the_held_out_photos(tmp_path):
    """Two held-out photos: four views each (the photo, mirrored, crops), view by view; eight held-out photos are
    measured alone; an unreadable held-out photo is skipped once, not once per view."""
    images = ImageSet.from_folder(_folder(tmp_path), holdout=2)
    views = images.holdout_views()
    assert len(views) == MIN_HOLDOUT_VIEWS == 8 and {v.path for v in views} == set(images.holdout)
    assert not {v.path for v in views} & set(images.calibration)
    assert [v.path for v in views[:2]] == images.holdout  # the first views are different photos
    assert len({(v.path, v.crop, v.mirror) for v in views}) == 8
    whole, mirrored = views[0], views[2]
    assert np.array_equal(next(images.batches([whole], (64, 64), "uint8")),
                          next(images.batches([images.holdout[0]], (64, 64), "uint8")))  # the photo as calibrated
    assert np.array_equal(mirrored.load((64, 64)), whole.load((64, 64))[:, ::-1])
    crop = HeldOutView(whole.path, (0.2, 0.2, 0.8, 0.8)).load((64, 64))
    assert crop.shape == (38, 58, 3) and np.array_equal(crop, whole.load((64, 64))[13:51, 19:77])
    many = ImageSet.from_folder(tmp_path, holdout=8).holdout_views()
    assert [v.path for v in many] == ImageSet.from_folder(tmp_path, holdout=8).holdout
    assert all(v.crop == (0, 0, 1, 1) and not v.mirror for v in many)
    assert ImageSet.from_folder(tmp_path, holdout=0).holdout_views() == []
    images.holdout[0].write_bytes(b"not a photo")
    assert len(list(images.batches(views, (64, 64), "float"))) == 4 and len(images.skipped) == 1


def test_truncated_and_fake_files_are_skipped_and_counted(tmp_path):
    folder = _folder(tmp_path, 6)
    data = (folder / "img00.jpg").read_bytes()
    (folder / "img00.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (folder / "fake.png").write_text("not a png")
    images = ImageSet.from_folder(folder, holdout=0)
    batches = list(images.batches(images.calibration, (64, 64), "float"))
    assert len(batches) == 5 and batches[0].shape == (1, 3, 64, 64)
    assert sorted(name for name, _ in images.skipped) == ["fake.png", "img00.jpg"]
    assert any("skipped 2 unreadable" in w for w in images.warnings(5))
    assert any("500+" in w for w in images.warnings(5))


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no images"),
    (lambda p: (p / "a.txt").write_text("x") and p, "no images"),
])
def test_bad_folders(tmp_path, setup, message):
    with pytest.raises(EffedgeError, match=message):
        ImageSet.from_folder(setup(tmp_path))


def test_zero_calibration_images_is_refused(tmp_path):
    with pytest.raises(EffedgeError, match="--calib-images 0: use at least 1"):
        ImageSet.from_folder(_folder(tmp_path, 3), count=0)


def test_shipped_calibration_images_are_usable():
    images = ImageSet.from_folder(DEFAULT_CALIB_DIR)
    batches = list(images.batches(images.calibration + images.holdout, (128, 128), "uint8"))
    assert len(batches) == 8 and not images.skipped and batches[0].dtype == np.uint8


def test_a_static_batch_larger_than_the_folder_is_filled_by_repeating_its_images(tmp_path):
    """The shipped calib/ has 7 calibration images: a batch-8 model still gets them all, once each as real."""
    images = ImageSet.from_folder(DEFAULT_CALIB_DIR)
    assert len(images.calibration) == 7 and len(images.holdout) == 1
    (batch, real), = images.padded_batches(images.calibration, (64, 64), "float", 8)
    assert batch.shape == (8, 3, 64, 64) and real == 7
    singles = np.concatenate(list(images.batches(images.calibration, (64, 64), "float")))
    assert np.array_equal(batch[:7], singles) and np.array_equal(batch[7], singles[0])  # padding repeats
    (held, held_real), = images.padded_batches(images.holdout, (64, 64), "float", 8)
    assert held.shape[0] == 8 and held_real == 1


def test_batches_of_a_larger_model_batch_keep_the_last_partial_one(tmp_path):
    images = ImageSet.from_folder(_folder(tmp_path, 5), holdout=0)
    padded = list(images.padded_batches(images.calibration, (32, 32), "uint8", 2))
    assert [(b.shape[0], real) for b, real in padded] == [(2, 2), (2, 2), (2, 1)]
    assert [b.shape[0] for b in images.batches(images.calibration, (32, 32), "uint8", 2)] == [2, 2, 1]


def test_a_folder_of_junk_files_is_refused_from_the_headers(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"this is not a JPEG")
    images = ImageSet.from_folder(tmp_path, holdout=0)
    with pytest.raises(EffedgeError, match=re.escape(f"none of the 3 calibration files in {tmp_path} is an image")):
        images.require_readable()
    Image.fromarray(photo()).save(tmp_path / "3.jpg")  # one real photo is enough to go on
    ImageSet.from_folder(tmp_path, holdout=0).require_readable()


def test_read_ahead_keeps_order_and_raises_where_the_item_is_asked_for():
    import threading

    from effedge.quantize.images import read_ahead

    assert list(read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4] and list(read_ahead([])) == []

    second_made = threading.Event()

    def watched():
        yield 0
        second_made.set()
        yield 1

    items = read_ahead(watched())
    assert next(items) == 0
    assert second_made.wait(10), "the next item is not made while the caller holds the current one"
    assert list(items) == [1]

    def failing():
        yield "first"
        raise ValueError("unreadable")

    items = read_ahead(failing())
    assert next(items) == "first"
    with pytest.raises(ValueError, match="unreadable"):
        next(items)


def test_resize_is_the_four_corner_bilinear_of_the_block_means():
    """The separable resize with integer block sums gives, bit for bit, the direct definition: float32 means of
    factor × factor blocks (edge pixels repeated), then each pixel blended from its four corners."""
    from effedge.runtime.preprocess import resize_bilinear

    def reference(image, height, width):
        src_h, src_w = image.shape[:2]
        fh, fw = max(1, src_h // height), max(1, src_w // width)
        img = image.astype(np.float32)
        ph, pw = -(-src_h // fh) * fh, -(-src_w // fw) * fw
        img = np.pad(img, ((0, ph - src_h), (0, pw - src_w), (0, 0)), mode="edge")
        img = img.reshape(ph // fh, fh, pw // fw, fw, -1).mean(axis=(1, 3))

        def axis(dst, src, factor):
            last = -(-src // factor) - 1
            coords = np.clip((np.arange(dst) + 0.5) * (src / dst) / factor - 0.5, 0, last)
            low = np.floor(coords).astype(np.int64)
            return low, np.minimum(low + 1, last), (coords - low).astype(np.float32)

        y0, y1, wy = axis(height, src_h, fh)
        x0, x1, wx = axis(width, src_w, fw)
        top = img[y0][:, x0] * (1 - wx)[None, :, None] + img[y0][:, x1] * wx[None, :, None]
        bottom = img[y1][:, x0] * (1 - wx)[None, :, None] + img[y1][:, x1] * wx[None, :, None]
        return np.clip(top * (1 - wy)[:, None, None] + bottom * wy[:, None, None] + 0.5, 0, 255).astype(np.uint8)

    rng = np.random.default_rng(3)
    for (h, w), (th, tw) in [((300, 451), (512, 512)), ((1411, 1411), (512, 512)), ((872, 1000), (333, 257)),
                             ((97, 61), (20, 9)), ((7, 5), (64, 3)), ((100, 100), (100, 50))]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(resize_bilinear(image, th, tw), reference(image, th, tw)), (h, w, th, tw)
