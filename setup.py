"""Thin shim: all metadata is in pyproject.toml (PEP 621)."""
from setuptools import setup

setup()
