"""Helpers the tests and the benchmarks share: the local cluster, the emulator process, a
fake Slurm CLI and the probe run inside test jobs. No test lives here."""
