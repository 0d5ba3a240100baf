/*
 * spank_qpu: the SPANK entry points, each only a dispatch to the file of its context
 * (see qpu.h for the layout).
 */
#include "qpu.h"

SPANK_PLUGIN(qpu, 1)

static struct qpu_config qpu_config;

/* Called in srun, sbatch/salloc, slurmd and slurmstepd, NOT in the job prolog/epilog:
 * register the option everywhere so it shows in sbatch/salloc/srun --help and its value
 * reaches slurmstepd. */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
    switch (spank_context()) {
    case S_CTX_SLURMD: /* once per slurmd start */
    case S_CTX_REMOTE: /* once per slurmstepd */
        qpu_log_version();
        break;
    default: /* srun, sbatch, salloc: nothing on the user's terminal */
        break;
    }
    if (qpu_config_parse(ac, av, &qpu_config) != 0)
        return -1;
    return qpu_option_register(sp);
}

/* slurm_spank_init is not called in the job-script context: parse arguments again. */
int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
    if (qpu_config_parse(ac, av, &qpu_config) != 0)
        return 0; /* never drain the node: the task init fails the job instead */
    /* no option registration here (refused in this context); getopt reads the value */
    return qpu_slurmd_job_prolog(sp, &qpu_config);
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE)
        return 0;
    return qpu_slurmstepd_task_init(sp, &qpu_config);
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    if (qpu_config_parse(ac, av, &qpu_config) != 0)
        return 0; /* a failing epilog drains the node */
    return qpu_slurmd_job_epilog(sp, &qpu_config);
}
