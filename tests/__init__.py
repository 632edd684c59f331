"""The test suite: a package, so the benchmarks can import its support module as ``tests.support``."""
