# Only here so that cffi generates the out-of-line FFI module at install time;
# all metadata lives in pyproject.toml.
import atexit
import shutil
import tempfile

from setuptools import setup

# Build outside the source tree: `pip install .` from a clone would leave build/ and *.egg-info in it,
# and `nsbuild build` binds the directory it runs from (the clone, in the README's set-up 1) at /work.
_scratch = tempfile.mkdtemp(prefix="nsbuild-build-")
atexit.register(shutil.rmtree, _scratch, True)

setup(cffi_modules=["builder/kernel/_ffi_build.py:ffibuilder"],
      options={"build": {"build_base": _scratch}, "egg_info": {"egg_base": _scratch}})
