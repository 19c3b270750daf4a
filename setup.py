"""The package list, found rather than written out (everything else is in pyproject.toml):
every package under slimc/ — a new subpackage such as slimc/prune/ needs no edit here —
plus the top-level folders that pyproject's ``[tool.setuptools.package-dir]`` maps into
slimc (``passes/`` → ``slimc.passes``, ``shape_rules/`` → ``slimc.shape_rules``) with
their own subpackages. Nothing else (tests/, benchmarks/) is installed."""
from setuptools import find_packages, setup
from setuptools.config.pyprojecttoml import read_configuration

PACKAGE_DIR = read_configuration("pyproject.toml", expand=False)["tool"]["setuptools"]["package-dir"]


def slimc_packages() -> list[str]:
    packages = find_packages(include=["slimc", "slimc.*"])
    for name, folder in PACKAGE_DIR.items():
        if folder != name.replace(".", "/"):  # a folder mapped into slimc
            packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(set(packages))


if __name__ == "__main__":  # as setuptools runs it (tests import slimc_packages)
    setup(packages=slimc_packages())
