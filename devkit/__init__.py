"""Development harness shared by the test suite and the benchmarks (servers, synthetic images and series,
the reference models); never installed in images: neither the wheel (pyproject's package list) nor the
Docker build context (.dockerignore) takes it."""
