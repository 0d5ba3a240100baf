/*
 * Privileged task init (root, in slurmstepd, before the user's program starts): set the
 * job's QPU environment with overwrite=1, replacing anything the user set.
 *
 * Normal path: `qproxy hook task-env` (root; it reads the job's root-only state) prints the
 * environment, or one line saying why there is none, which goes to the task's stderr via
 * slurm_error; we then return -1: a failing task init fails the job but keeps the node up.
 * Every wait and every message lives there, in Python.
 *
 * Fast path, only with the plugin argument state_dir=: the job's proxy writes its task
 * environment to <state_dir>/<job>/proxy.env (root, 0600, renamed into place whole). If that
 * file appears within FAST_WAIT_MS and is private to root, we set it from here and save a
 * Python start on every QPU job's launch (~0.1 s of a lane held idle). Anything else (an
 * error recorded by the prolog, no file yet, an unexpected owner or mode) takes the normal
 * path, so no decision or message is made here.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qpu.h"

#define FAST_WAIT_MS 3000
#define ENV_MAX 8192

static int valid_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isupper((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '_')
            return 0;
    return 1;
}

/* Set each NAME=value line of buf (modified in place). */
static int set_lines(spank_t sp, char *buf)
{
    char *line, *save = NULL;

    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        if (!valid_name(line))
            continue;
        if (spank_setenv(sp, line, eq + 1, 1) != ESPANK_SUCCESS) {
            slurm_error("qpu: cannot set %s in the task environment", line);
            return -1;
        }
    }
    return 0;
}

/* 1: environment set; 0: take the normal path; -1: failed while setting. */
static int fast_env(spank_t sp, const char *state_dir, const char *jobid)
{
    char path[QPU_PATH_MAX + 32], err[QPU_PATH_MAX + 32], buf[ENV_MAX];
    struct stat st;
    size_t used = 0;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "%s/%s/proxy.env", state_dir, jobid);
    snprintf(err, sizeof(err), "%s/%s/error", state_dir, jobid);
    for (int waited = 0;; waited += 5) {
        if (access(err, F_OK) == 0)
            return 0;
        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0)
            break;
        if (errno != ENOENT || waited >= FAST_WAIT_MS)
            return 0;
        usleep(5000);
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 ||
        (st.st_mode & 077) != 0) {
        close(fd);
        return 0;
    }
    while (used < sizeof(buf) - 1 && (n = read(fd, buf + used, sizeof(buf) - 1 - used)) > 0)
        used += (size_t)n;
    close(fd);
    buf[used] = '\0';
    /* a whole file from a proxy that writes the QPU variables too, or the normal path */
    if (used == 0 || used >= sizeof(buf) - 1 ||
        (strncmp(buf, "QPU_BACKEND=", 12) != 0 && !strstr(buf, "\nQPU_BACKEND=")))
        return 0;
    return set_lines(sp, buf) == 0 ? 1 : -1;
}

int qpu_task_init(spank_t sp, const struct qpu_args *args)
{
    char backend[QPU_BACKEND_MAX + 1], jobid[16], out[ENV_MAX];
    uint32_t id = 0;
    int rc = qpu_option_backend(sp, backend, sizeof(backend));

    if (rc == 0)
        return 0; /* not a QPU job */
    if (spank_get_item(sp, S_JOB_ID, &id) != ESPANK_SUCCESS) {
        slurm_error("qpu: cannot read the job id");
        return -1;
    }
    snprintf(jobid, sizeof(jobid), "%u", id);
    if (args->state_dir[0]) {
        rc = fast_env(sp, args->state_dir, jobid);
        if (rc != 0)
            return rc == 1 ? 0 : -1;
    }
    {
        char *argv[] = {(char *)args->qproxy, "hook", "task-env", "--config",
                        (char *)args->config, "--job-id", jobid, NULL};
        rc = qpu_run(argv, out, sizeof(out), 60);
    }
    if (rc != 0) {
        char *nl = strchr(out, '\n');
        if (nl)
            *nl = '\0';
        slurm_error("qpu: %s", out[0] ? out : "the QPU proxy for this job is not available");
        return -1;
    }
    return set_lines(sp, out);
}
