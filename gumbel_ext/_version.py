"""The one place the package's version numbers are written.

Read without importing the package (no torch needed) by pyproject.toml (setuptools'
``attr:``), CMakeLists.txt (``file(STRINGS)``), scripts/ and tests/test_release.py, so
this file must keep the plain ``NAME = literal`` form.
"""

__version__ = "0.1.0"

# Note [Noise version]
# The version of the noise contract: which float32 Gumbel noise every element gets for a
# given (seed, offset, row, column). Users who record seeds get the same samples after an
# upgrade exactly when this number is unchanged. Bump it with every change of the noise
# bits on any CPU copy, record the release in CHANGELOG.md, and regenerate the golden
# table (python3 scripts/regenerate_golden_noise.py); tests/test_golden_noise.py fails
# until all three are done.
NOISE_VERSION = 2
