"""``from qiskit_slurm_provider import Sampler``: the seed design's hybrid-program primitives.

A thin facade over what qproxy already has, chosen where ``Sampler()`` / ``Estimator()`` is
built (qiskit_slurm_provider.facade):

- **job** mode, in a task of a QPU job (task init set ``QPU_BACKEND``, ``QPU_LANES`` and the
  ``QISKIT_IBM_*`` variables of the job's proxy): qiskit-ibm-runtime's ``SamplerV2`` /
  ``EstimatorV2`` on ``QiskitRuntimeService()`` and the job's backend;
- **slurm** mode, anywhere else with Slurm's ``sbatch`` on PATH: qproxy's ``SlurmSampler`` /
  ``SlurmEstimator``, every ``run()`` its own short Slurm job holding one lane
  (docs/slurm_mode.md), for ``backend=``, else ``$QPU_BACKEND``, else the centre's only QPU.

Neither possible: ``ProviderError`` with one line saying what is missing.
"""

from qiskit_slurm_provider.facade import Estimator, ProviderError, Sampler

__all__ = ["Estimator", "ProviderError", "Sampler"]
