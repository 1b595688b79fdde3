"""Build of the one compiled module, SM4-GCM for payload protection (everything else is in
pyproject.toml). It is optional: without a C compiler the package installs without it and SM4-GCM
runs through ``cryptography`` instead, more slowly (docs/security-payload.md)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "openfeeder.security._sm4gcm",
            sources=["src/openfeeder/security/_sm4gcm.c"],
            optional=True,
        ),
        Extension(
            "openfeeder.security._aesgcm",
            sources=["src/openfeeder/security/_aesgcm.c"],
            libraries=["crypto"],
            optional=True,
        ),
    ]
)
