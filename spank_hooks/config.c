/* Plugin arguments from plugstack.conf: `config=/etc/qproxy/qproxy.toml qproxy=/usr/local/bin/qproxy`. */
#include <stdio.h>
#include <string.h>

#include "qpu.h"

static int set(char *dst, const char *value, const char *key)
{
    if (value[0] != '/' || strlen(value) >= QPU_PATH_MAX) {
        qpu_error("%s= must be an absolute path", key);
        return -1;
    }
    strcpy(dst, value);
    return 0;
}

int qpu_config_parse(int ac, char **av, struct qpu_config *cfg)
{
    snprintf(cfg->config, sizeof(cfg->config), "%s", "/etc/qproxy/qproxy.toml");
    snprintf(cfg->qproxy, sizeof(cfg->qproxy), "%s", "/usr/local/bin/qproxy");
    for (int i = 0; i < ac; i++) {
        if (strncmp(av[i], "config=", 7) == 0) {
            if (set(cfg->config, av[i] + 7, "config") != 0)
                return -1;
        } else if (strncmp(av[i], "qproxy=", 7) == 0) {
            if (set(cfg->qproxy, av[i] + 7, "qproxy") != 0)
                return -1;
        } else {
            qpu_error("unknown plugin argument '%s'", av[i]);
            return -1;
        }
    }
    return 0;
}
