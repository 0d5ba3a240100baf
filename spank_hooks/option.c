/*
 * The user-facing option: --q_backend=NAME (and the spelling --q-backend=NAME).
 * The callback checks syntax only (it runs at submit, and again in slurmstepd, twice under
 * srun: it must be idempotent); whether NAME is a configured QPU is decided by the prolog,
 * which knows the admin config, and reported to the user by the task init.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "qpu.h"

static char backend[QPU_BACKEND_MAX + 1];

int qpu_backend_valid(const char *value)
{
    size_t n = value ? strlen(value) : 0;
    if (n == 0 || n > QPU_BACKEND_MAX || !isalpha((unsigned char)value[0]))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        if (!isalnum(c) && c != '_' && c != '-' && c != '.')
            return 0;
    }
    return 1;
}

static int cb(int val, const char *optarg, int remote)
{
    (void)val;
    if (!qpu_backend_valid(optarg)) {
        qpu_error("--q_backend: invalid QPU backend name '%s' (expected a name like "
                  "ibm_fez: letters, digits, '_', '-', '.', at most %d characters)",
                  optarg ? optarg : "", QPU_BACKEND_MAX);
        return -1;
    }
    if (backend[0] && strcmp(backend, optarg) != 0 && !remote) {
        qpu_error("--q_backend given twice with different values ('%s', '%s')", backend,
                  optarg);
        return -1;
    }
    snprintf(backend, sizeof(backend), "%s", optarg);
    return 0;
}

static struct spank_option options[] = {
    {"q_backend", "NAME", "Quantum backend (QPU) for this job, e.g. ibm_fez; ask for lanes "
                          "with --gres=qpu:N or -L NAME:N", 1, 0, cb},
    {"q-backend", "NAME", "Same as --q_backend", 1, 0, cb},
};

int qpu_option_register(spank_t sp)
{
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        spank_err_t rc = spank_option_register(sp, &options[i]);
        if (rc != ESPANK_SUCCESS) {
            qpu_error("cannot register --%s: %s", options[i].name, spank_strerror(rc));
            return -1;
        }
    }
    return 0;
}

int qpu_option_backend(spank_t sp, char *buf, size_t len)
{
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        char *value = NULL;
        if (spank_option_getopt(sp, &options[i], &value) == ESPANK_SUCCESS && value) {
            if (!qpu_backend_valid(value))
                return -1;
            snprintf(buf, len, "%s", value);
            return 1;
        }
    }
    if (backend[0]) { /* set by the callback in this process */
        snprintf(buf, len, "%s", backend);
        return 1;
    }
    return 0;
}
