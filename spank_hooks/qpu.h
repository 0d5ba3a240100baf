/*
 * spank_qpu: shared declarations. The plugin is deliberately tiny: it registers the
 * --q_backend option, and in the privileged contexts hands off to `qproxy hook ...`
 * (Python), which owns all policy, state and error messages.
 *
 * Layout (after NVIDIA pyxis' naming): spank_qpu.c the SPANK entry points (dispatch only),
 * config.c the plugstack.conf arguments, option.c the user option, slurmd.c the job
 * prolog/epilog that slurmd runs, slurmstepd.c the task init in slurmstepd, exec.c running
 * the Python hooks, version.c the plugin and Slurm versions.
 */
#ifndef QPU_H
#define QPU_H

#include <stddef.h>
#include <sys/types.h>

#include <slurm/spank.h>

/* Set by the Makefile (-DQPU_VERSION="..."; default: the version in ../pyproject.toml). */
#ifndef QPU_VERSION
#define QPU_VERSION "unknown"
#endif
#define PLUGIN_VERSION QPU_VERSION

/* Every message the plugin logs starts with this (users see it after "sbatch: error: "). */
#define QPU_LOG_PREFIX "spank_qpu: "
#define qpu_error(...) slurm_error(QPU_LOG_PREFIX __VA_ARGS__)
#define qpu_info(...) slurm_info(QPU_LOG_PREFIX __VA_ARGS__)

#define QPU_BACKEND_MAX 64
#define QPU_PATH_MAX 4096

/* config.c: plugin arguments from plugstack.conf (config=..., qproxy=...). */
struct qpu_config {
    char config[QPU_PATH_MAX]; /* admin config passed to every hook */
    char qproxy[QPU_PATH_MAX]; /* the `qproxy` executable run as root */
};
int qpu_config_parse(int ac, char **av, struct qpu_config *cfg);

/* option.c: the --q_backend / --q-backend option. */
int qpu_option_register(spank_t sp);
/* Copy the job's backend into buf; returns 1 if set, 0 if not, -1 on error. */
int qpu_option_backend(spank_t sp, char *buf, size_t len);
int qpu_backend_valid(const char *value);

/* exec.c: run argv with a clean environment; stdout captured into out (NUL-terminated). */
int qpu_run(char *const argv[], char *out, size_t outlen, int timeout_s);

/* slurmd.c: job prolog / epilog (root, run by slurmd in the job-script context). */
int qpu_slurmd_job_prolog(spank_t sp, const struct qpu_config *cfg);
int qpu_slurmd_job_epilog(spank_t sp, const struct qpu_config *cfg);

/* slurmstepd.c: privileged task init (root, before the user's program starts). */
int qpu_slurmstepd_task_init(spank_t sp, const struct qpu_config *cfg);

/*
 * version.c: "qpu_built_for_slurm=22.05.8", derived at compile time from the same
 * SLURM_VERSION_NUMBER that SPANK_PLUGIN() stores in plugin_version (what Slurm's loader
 * checks). Not exported; `check-version` and `make install` read it out of the .so.
 */
#define QPU_BUILT_FOR_TAG "qpu_built_for_slurm="
extern const char qpu_built_for[];
const char *qpu_built_for_slurm(void); /* just the version, e.g. "22.05.8" */
void qpu_log_version(void);

#endif
