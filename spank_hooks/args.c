/* Plugin arguments: `config=/etc/qproxy/qproxy.toml qproxy=/usr/local/bin/qproxy`. */
#include <stdio.h>
#include <string.h>

#include "qpu.h"

static int set(char *dst, const char *value, const char *key)
{
    if (value[0] != '/' || strlen(value) >= QPU_PATH_MAX) {
        slurm_error("spank_qpu: %s= must be an absolute path", key);
        return -1;
    }
    strcpy(dst, value);
    return 0;
}

int qpu_args_parse(int ac, char **av, struct qpu_args *args)
{
    snprintf(args->config, sizeof(args->config), "%s", "/etc/qproxy/qproxy.toml");
    snprintf(args->qproxy, sizeof(args->qproxy), "%s", "/usr/local/bin/qproxy");
    for (int i = 0; i < ac; i++) {
        if (strncmp(av[i], "config=", 7) == 0) {
            if (set(args->config, av[i] + 7, "config") != 0)
                return -1;
        } else if (strncmp(av[i], "qproxy=", 7) == 0) {
            if (set(args->qproxy, av[i] + 7, "qproxy") != 0)
                return -1;
        } else {
            slurm_error("spank_qpu: unknown plugin argument '%s'", av[i]);
            return -1;
        }
    }
    return 0;
}
