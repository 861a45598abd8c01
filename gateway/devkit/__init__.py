"""What the benchmarks, the demo, the soak, the chaos tests and the test suite share to run the
real parts around a gateway: a mosquitto of our own, child processes, one TOML writer.

The daemon never imports this package (tests/unit/test_imports.py): it is how fc-edge is
exercised, not how it runs.
"""
