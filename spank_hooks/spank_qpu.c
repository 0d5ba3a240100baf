/*
 * spank_qpu: entry points, one per Slurm context, each a one-line dispatch.
 * Layout after NVIDIA pyxis: args.c (plugin arguments), option.c (user option),
 * slurmd.c (job prolog/epilog), task.c (task init), exec.c (running the Python hooks).
 */
#include "qpu.h"

SPANK_PLUGIN(qpu, 1)

static struct qpu_args qpu_args;

/* Called in every context except job prolog/epilog: register the option everywhere so it
 * shows in sbatch/salloc/srun --help and its value reaches slurmstepd. */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
    if (qpu_args_parse(ac, av, &qpu_args) != 0)
        return -1;
    return qpu_option_register(sp);
}

/* slurm_spank_init is not called in the job-script context: parse arguments again. */
int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
    if (qpu_args_parse(ac, av, &qpu_args) != 0)
        return 0; /* never drain the node: the task init fails the job instead */
    /* no option registration here (refused in this context); getopt reads the value */
    return qpu_job_prolog(sp, &qpu_args);
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE)
        return 0;
    return qpu_task_init(sp, &qpu_args);
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    if (qpu_args_parse(ac, av, &qpu_args) != 0)
        return 0; /* a failing epilog drains the node */
    return qpu_job_epilog(sp, &qpu_args);
}
