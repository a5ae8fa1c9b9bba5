"""Package discovery: blocks/ and kernels/ install as archlab.blocks and archlab.kernels,
and every sub-package of the three folders is found, never listed (the rest of the
project's metadata is in pyproject.toml)."""

from setuptools import find_packages, setup

ROOTS = {"archlab": "archlab", "archlab.blocks": "blocks", "archlab.kernels": "kernels"}

packages = []
for name, folder in ROOTS.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
