"""Ships the top-level calib/ and profiles/ folders inside the wheel, as effedge/data/calib and
effedge/data/profiles (effedge.shipped_data finds them there, or at the top of a source checkout)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("calib", "profiles")


class BuildWithData(build_py):
    def run(self):
        super().run()
        for name in SHIPPED:
            shutil.copytree(Path(name), Path(self.build_lib) / "effedge" / "data" / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithData})
