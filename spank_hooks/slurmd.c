/*
 * Job prolog and epilog: the job-script context that slurmd runs (root, on each node of the
 * allocation; with PrologFlags=Alloc the prolog runs at allocation time for sbatch, salloc
 * and srun alike).
 * Both ALWAYS return 0: a failing job_prolog drains the node and requeues+holds a batch
 * job, a failing job_epilog drains the node. The Python prolog records any error in the
 * job's state directory; the task init then fails the job with that message.
 */
#include <stdint.h>
#include <stdio.h>

#include "qpu.h"

static int job_ids(spank_t sp, char *jobid, size_t jlen, char *uid, size_t ulen)
{
    uint32_t id = 0;
    uid_t u = 0;
    if (spank_get_item(sp, S_JOB_ID, &id) != ESPANK_SUCCESS)
        return -1;
    snprintf(jobid, jlen, "%u", id);
    if (uid) {
        if (spank_get_item(sp, S_JOB_UID, &u) != ESPANK_SUCCESS)
            return -1;
        snprintf(uid, ulen, "%u", (unsigned)u);
    }
    return 0;
}

int qpu_slurmd_job_prolog(spank_t sp, const struct qpu_config *cfg)
{
    char backend[QPU_BACKEND_MAX + 1], jobid[16], uid[16], out[1024];
    int rc = qpu_option_backend(sp, backend, sizeof(backend));

    if (rc == 0)
        return 0; /* not a QPU job */
    if (job_ids(sp, jobid, sizeof(jobid), uid, sizeof(uid)) != 0) {
        qpu_error("prolog: cannot read job id/uid");
        return 0;
    }
    if (rc < 0)
        snprintf(backend, sizeof(backend), "%s", "-invalid-");
    {
        char *argv[] = {(char *)cfg->qproxy, "hook", "prolog", "--config",
                        (char *)cfg->config, "--job-id", jobid, "--uid", uid,
                        "--backend", backend, NULL};
        rc = qpu_run(argv, out, sizeof(out), 300);
    }
    if (rc != 0)
        qpu_error("job %s: `qproxy hook prolog` exited %d", jobid, rc);
    return 0;
}

int qpu_slurmd_job_epilog(spank_t sp, const struct qpu_config *cfg)
{
    char backend[QPU_BACKEND_MAX + 1], jobid[16], out[1024];
    int rc = qpu_option_backend(sp, backend, sizeof(backend));

    if (rc == 0)
        return 0;
    if (job_ids(sp, jobid, sizeof(jobid), NULL, 0) != 0) {
        qpu_error("epilog: cannot read job id");
        return 0;
    }
    {
        char *argv[] = {(char *)cfg->qproxy, "hook", "epilog", "--config",
                        (char *)cfg->config, "--job-id", jobid, NULL};
        rc = qpu_run(argv, out, sizeof(out), 300);
    }
    if (rc != 0)
        qpu_error("job %s: `qproxy hook epilog` exited %d", jobid, rc);
    return 0;
}
