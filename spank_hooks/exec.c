#define _GNU_SOURCE
/*
 * Run a hook as root with a clean, fixed environment: the job's environment is
 * user-controlled (PYTHONPATH, LD_PRELOAD, ...) and must never reach a root process.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qpu.h"

int qpu_run(char *const argv[], char *out, size_t outlen, int timeout_s)
{
    static char slurm_conf[QPU_PATH_MAX + 16];
    char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG=C.UTF-8", NULL, NULL};
    const char *conf = getenv("SLURM_CONF");
    int fds[2];
    size_t used = 0;
    time_t deadline = time(NULL) + timeout_s;
    int status = 0;
    pid_t pid;

    if (conf && conf[0] == '/' && strlen(conf) < QPU_PATH_MAX) {
        snprintf(slurm_conf, sizeof(slurm_conf), "SLURM_CONF=%s", conf);
        envp[2] = slurm_conf;
    }
    if (out && outlen)
        out[0] = '\0';
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(fds[1], STDOUT_FILENO);
        /* stderr goes to the hook's own log (the Python side), never the user's task */
        if (devnull >= 0)
            dup2(devnull, STDERR_FILENO);
        setsid();
        /* not the user's cwd: nothing of the job's may shadow what root imports */
        if (chdir("/") != 0)
            _exit(126);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    close(fds[1]);
    for (;;) {
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        int left = (int)(deadline - time(NULL));
        char scratch[512];
        ssize_t n;
        if (left <= 0) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            break;
        }
        if (poll(&p, 1, left * 1000) <= 0)
            continue;
        if (out && used + 1 < outlen)
            n = read(fds[0], out + used, outlen - used - 1);
        else
            n = read(fds[0], scratch, sizeof(scratch)); /* drain */
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (out && used + 1 < outlen)
            used += (size_t)n;
    }
    close(fds[0]);
    if (out && outlen)
        out[used] = '\0';
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}
