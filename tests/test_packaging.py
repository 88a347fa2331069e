"""The wheel ships calib/, profiles/, the label lists and the demo detector, and an installed effedge finds them
from any directory."""
import fcntl
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the checkout's build/ folder: one test process at a time (pytest-xdist runs two; the
    # session's temporary root is common to them)
    with open(tmp_path_factory.getbasetemp().parent / "wheel-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                                str(ROOT), "-w", str(out)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed: {build.stderr[-2000:]}")
    [path] = out.glob("effedge-*.whl")
    return path


def test_wheel_holds_the_calibration_images_and_profiles(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("calib", "profiles"):
        shipped = {p.name for p in (ROOT / folder).iterdir() if p.is_file()}
        assert {f"effedge/data/{folder}/{name}" for name in shipped} <= names
    for folder in ("labels", "demo"):  # inside the package in the source tree too
        shipped = {p.name for p in (ROOT / "effedge" / "data" / folder).iterdir() if p.is_file()}
        assert shipped and {f"effedge/data/{folder}/{name}" for name in shipped} <= names
    # the DeepStream bundle copies the parser's sources from the installed package
    native = {p.name for p in (ROOT / "effedge" / "native").iterdir() if p.suffix in (".h", ".cpp")}
    assert {f"effedge/native/{name}" for name in native | {"CMakeLists.txt"}} <= names


def test_installed_package_finds_its_data_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("from effedge.quantize.images import DEFAULT_CALIB_DIR, ImageSet; from effedge.plan.profiles import load_profile; "
             "print(DEFAULT_CALIB_DIR); print(len(ImageSet.from_folder(DEFAULT_CALIB_DIR).calibration)); "
             "print(load_profile('orin-nx-16gb').path); "
             "from effedge.demo import DEMO_WEIGHTS, demo_model; from effedge.runtime.labels import coco90, imagenet1k; "
             "print(DEMO_WEIGHTS, DEMO_WEIGHTS.stat().st_size > 10**6, ','.join(demo_model().class_names)); "
             "print(coco90().name(0), len(imagenet1k().names)); "
             "from effedge.package.deepstream import native_sources; print(native_sources()[0].parent)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    calib_dir, images, profile, demo, demo_read, demo_names, person, imagenet, native = result.stdout.split()
    assert Path(calib_dir) == site / "effedge" / "data" / "calib" and int(images) >= 7
    assert Path(profile).parent == site / "effedge" / "data" / "profiles"
    assert Path(demo).parent == site / "effedge" / "data" / "demo" and demo_read == "True"
    assert (demo_names, person, imagenet) == ("circle,square,triangle,cross", "person", "1000")
    assert Path(native) == site / "effedge" / "native"
