/*
 * spank_qpu: shared declarations. The plugin is deliberately tiny: it registers the
 * --q_backend option, and in the privileged contexts hands off to `qproxy hook ...`
 * (Python), which owns all policy, state and error messages.
 */
#ifndef QPU_H
#define QPU_H

#include <stddef.h>
#include <sys/types.h>

#include <slurm/spank.h>

#define QPU_BACKEND_MAX 64
#define QPU_PATH_MAX 4096

/* args.c: plugin arguments from plugstack.conf (config=..., qproxy=...). */
struct qpu_args {
    char config[QPU_PATH_MAX]; /* admin config passed to every hook */
    char qproxy[QPU_PATH_MAX]; /* the `qproxy` executable run as root */
};
int qpu_args_parse(int ac, char **av, struct qpu_args *args);

/* option.c: the --q_backend / --q-backend option. */
int qpu_option_register(spank_t sp);
/* Copy the job's backend into buf; returns 1 if set, 0 if not, -1 on error. */
int qpu_option_backend(spank_t sp, char *buf, size_t len);
int qpu_backend_valid(const char *value);

/* exec.c: run argv with a clean environment; stdout captured into out (NUL-terminated). */
int qpu_run(char *const argv[], char *out, size_t outlen, int timeout_s);

/* slurmd.c: job prolog / epilog (root, job-script context). */
int qpu_job_prolog(spank_t sp, const struct qpu_args *args);
int qpu_job_epilog(spank_t sp, const struct qpu_args *args);

/* task.c: privileged task init (root, slurmstepd, before the user's program starts). */
int qpu_task_init(spank_t sp, const struct qpu_args *args);

#endif
