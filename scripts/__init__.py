"""scripts/ as a package, so tests and benchmarks can import the local cluster's facts
(`from scripts.localcluster.settings import Settings`) instead of re-deriving them.

The extensionless files here (cluster, slurmroot, test, demo) are the commands; the package
code lives in scripts/localcluster/.
"""
