"""Independent implementations the tests hold progan to (oracles other than the code under test); the
benchmarks time them too. Not test modules: pytest collects nothing here."""
