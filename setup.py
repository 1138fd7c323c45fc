"""setuptools shim: ships the activation files at the purelib root of wheel and editable installs.

``patches/open_clip_c2lip.pth`` (one gated import line) and ``patches/open_clip_c2lip.start``
(PEP 829, Python >= 3.15) must land directly in site-packages, next to the package, which
``setup.cfg`` cannot express. ``build_py`` copies them to the build root (regular wheels);
``editable_wheel`` adds them to the editable wheel (``pip install -e .``).
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ACTIVATION_FILES = [Path("patches", "open_clip_c2lip.pth"), Path("patches", "open_clip_c2lip.start")]


def _copy_activation_files(root_dir) -> list:
    here = Path(__file__).resolve().parent
    outputs = []
    for source in ACTIVATION_FILES:
        target = Path(root_dir, source.name)
        shutil.copyfile(here / source, target)
        outputs.append(str(target))
    return outputs


class BuildPyWithActivation(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # editable builds get them from editable_wheel below
            self._activation_outputs = _copy_activation_files(self.build_lib)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + getattr(self, "_activation_outputs", [])


class EditableWheelWithActivation(editable_wheel):
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        # files written to the unpacked wheel dir end up at the wheel's purelib root
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        _copy_activation_files(unpacked_wheel)
        return result


setup(cmdclass={"build_py": BuildPyWithActivation, "editable_wheel": EditableWheelWithActivation})
