# Only here so that cffi generates the out-of-line FFI module at install time;
# all metadata lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["builder/_ffi_build.py:ffibuilder"])
