/*
 * Versions: the plugin's own (PLUGIN_VERSION) and the Slurm release it was compiled against.
 * A .so built against one Slurm major (e.g. 22.05) is refused by another (24.11:
 * "Incompatible plugin version"), and since plugstack.conf lists it `required`, every job
 * submission then fails. So the Slurm version goes into the .so as a readable string that
 * `check-version` (and through it `make install`) compares with the installed Slurm.
 *
 * Debian's slurm/slurm_version.h has only SLURM_VERSION_NUMBER (0x160508), no string: the
 * string is spelled out digit by digit from that number, so it can never disagree with the
 * plugin_version symbol that SPANK_PLUGIN() defines from the same macro.
 */
#include <string.h>

#include <slurm/slurm_version.h>

#include "qpu.h"

#define V_MAJ SLURM_VERSION_MAJOR(SLURM_VERSION_NUMBER)
#define V_MIN SLURM_VERSION_MINOR(SLURM_VERSION_NUMBER)
#define V_MIC SLURM_VERSION_MICRO(SLURM_VERSION_NUMBER)
#define DIGIT(n) ((char)('0' + (n)))

/* "qpu_built_for_slurm=MM.mm.u" (Slurm's own spelling: two-digit minor, plain micro) */
const char qpu_built_for[] = {
    'q', 'p', 'u', '_', 'b', 'u', 'i', 'l', 't', '_', 'f', 'o', 'r', '_', 's', 'l', 'u', 'r',
    'm', '=',
    DIGIT(V_MAJ / 10 % 10), DIGIT(V_MAJ % 10), '.', DIGIT(V_MIN / 10 % 10), DIGIT(V_MIN % 10),
    '.',
    V_MIC >= 100 ? DIGIT(V_MIC / 100) : V_MIC >= 10 ? DIGIT(V_MIC / 10) : DIGIT(V_MIC),
    V_MIC >= 100 ? DIGIT(V_MIC / 10 % 10) : V_MIC >= 10 ? DIGIT(V_MIC % 10) : '\0',
    V_MIC >= 100 ? DIGIT(V_MIC % 10) : '\0',
    '\0'};

const char *qpu_built_for_slurm(void)
{
    return qpu_built_for + strlen(QPU_BUILT_FOR_TAG);
}

/* Once per slurmd start and per slurmstepd: which plugin build this daemon loaded. */
void qpu_log_version(void)
{
    qpu_info("version %s, built for Slurm %s", PLUGIN_VERSION, qpu_built_for_slurm());
}
