/*
 * Privileged task init (root, in slurmstepd, before the user's program starts): ask
 * `qproxy hook task-env` (root; it reads the job's root-only connection record) for the
 * environment and set it with overwrite=1, replacing anything the user set.
 * Why exec Python instead of reading the record here: the record's location and format,
 * and every error message the user sees, live in one place (qproxy/hooks/); the C stays a
 * dispatcher. Cost: one short Python start per task of a QPU job only.
 * On error the hook prints one line, which goes to the task's stderr via slurm_error, and
 * we return -1: a failing task init fails the job but keeps the node up.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "qpu.h"

/* A POSIX environment name: QISKIT_*, QPU_* and QRMI's per-resource {name}_QRMI_* (resource
 * names may be lower case, e.g. ibm_fez_QRMI_IBM_QCS_ENDPOINT). */
static int valid_name(const char *s)
{
    if (!*s || isdigit((unsigned char)*s))
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return 0;
    return 1;
}

int qpu_slurmstepd_task_init(spank_t sp, const struct qpu_config *cfg)
{
    char backend[QPU_BACKEND_MAX + 1], jobid[16], out[8192];
    uint32_t id = 0;
    char *line, *save = NULL;
    int rc = qpu_option_backend(sp, backend, sizeof(backend));

    if (rc == 0)
        return 0; /* not a QPU job */
    if (spank_get_item(sp, S_JOB_ID, &id) != ESPANK_SUCCESS) {
        qpu_error("cannot read the job id");
        return -1;
    }
    snprintf(jobid, sizeof(jobid), "%u", id);
    {
        char *argv[] = {(char *)cfg->qproxy, "hook", "task-env", "--config",
                        (char *)cfg->config, "--job-id", jobid, NULL};
        rc = qpu_run(argv, out, sizeof(out), 60);
    }
    if (rc != 0) {
        char *nl = strchr(out, '\n');
        if (nl)
            *nl = '\0';
        qpu_error("%s", out[0] ? out : "the QPU proxy for this job is not available");
        return -1;
    }
    for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (line[0] == '-' && !eq && valid_name(line + 1)) {
            /* "-NAME": a task with no QPU must not keep one inherited from another step */
            spank_unsetenv(sp, line + 1);
            continue;
        }
        if (!eq)
            continue;
        *eq = '\0';
        if (!valid_name(line))
            continue;
        if (spank_setenv(sp, line, eq + 1, 1) != ESPANK_SUCCESS) {
            qpu_error("cannot set %s in the task environment", line);
            return -1;
        }
    }
    return 0;
}
