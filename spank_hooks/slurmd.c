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
#include <stdlib.h>
#include <string.h>

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

/*
 * This node's Slurm name (slurmd sets SLURMD_NODENAME in the job prolog's environment,
 * after the job's SPANK variables, so a job cannot choose it): a multi-node job's prolog
 * needs it to tell its first node from the others; `slurmd -N name` nodes share one
 * hostname. Empty if unset or not a plain node name.
 */
static void node_name(char *buf, size_t len)
{
    const char *node = getenv("SLURMD_NODENAME");
    size_t i, n = node ? strlen(node) : 0;

    buf[0] = '\0';
    if (n == 0 || n >= len)
        return;
    for (i = 0; i < n; i++) {
        char c = node[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return;
    }
    memcpy(buf, node, n + 1);
}

int qpu_slurmd_job_prolog(spank_t sp, const struct qpu_config *cfg)
{
    char backend[QPU_BACKEND_MAX + 1], jobid[16], uid[16], node[128], out[1024];
    int rc = qpu_option_backend(sp, backend, sizeof(backend));

    if (rc == 0)
        return 0; /* not a QPU job */
    if (job_ids(sp, jobid, sizeof(jobid), uid, sizeof(uid)) != 0) {
        qpu_error("prolog: cannot read job id/uid");
        return 0;
    }
    if (rc < 0)
        snprintf(backend, sizeof(backend), "%s", "-invalid-");
    node_name(node, sizeof(node));
    {
        /* without a node name the list ends before "--node" (Python falls back) */
        char *argv[] = {(char *)cfg->qproxy, "hook", "prolog", "--config",
                        (char *)cfg->config, "--job-id", jobid, "--uid", uid,
                        "--backend", backend, node[0] ? "--node" : NULL, node, NULL};
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
