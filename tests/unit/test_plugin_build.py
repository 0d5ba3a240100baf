"""The SPANK plugin's build (spank_hooks/Makefile, spank_hooks/check-version): what the .so
exports, that it is hardened, which Slurm version it records, and that `make install`
refuses a plugin built for another Slurm than the installed one.

Everything builds into temporary directories (O=...), never into spank_hooks/. The
mismatched plugin is a real one: built against a copy of the installed Slurm headers whose
SLURM_VERSION_NUMBER says another release, exactly what building against another Slurm's
headers produces (its plugin_version symbol, what Slurm's loader checks, changes with it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPANK = REPO / "spank_hooks"
CHECK = SPANK / "check-version"
HEADERS = Path("/usr/include")
PLUGIN_SYMBOLS = {"plugin_name", "plugin_type", "plugin_version", "spank_plugin_version"}
ENTRY_POINTS = {
    "slurm_spank_init",
    "slurm_spank_job_prolog",
    "slurm_spank_task_init_privileged",
    "slurm_spank_job_epilog",
}


def _cc() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


pytestmark = [
    pytest.mark.skipif(_cc() is None, reason="no C compiler (cc/gcc)"),
    pytest.mark.skipif(shutil.which("make") is None, reason="no make"),
    pytest.mark.skipif(
        not (HEADERS / "slurm" / "spank.h").exists(), reason="no slurm/spank.h (libslurm-dev)"
    ),
    pytest.mark.skipif(
        not (shutil.which("nm") and shutil.which("readelf")), reason="no binutils (nm, readelf)"
    ),
]


# ------------------------------------------------------------------------------ helpers
def version_number(include: Path) -> int:
    text = (include / "slurm" / "slurm_version.h").read_text()
    m = re.search(r"^#define\s+SLURM_VERSION_NUMBER\s+(0x[0-9a-fA-F]+|\d+)", text, re.M)
    assert m, f"no SLURM_VERSION_NUMBER in {include}/slurm/slurm_version.h"
    return int(m.group(1), 0)


def spelled(number: int) -> str:
    """Slurm's own spelling of a version number: 0x160508 -> 22.05.8."""
    return f"{number >> 16 & 0xFF}.{number >> 8 & 0xFF:02d}.{number & 0xFF}"


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def installed_slurm() -> str | None:
    """What the guard compares with, found independently of check-version."""
    for cmd in ("slurmd", "sinfo"):
        path = shutil.which(cmd) or next(
            (p for p in (f"/usr/sbin/{cmd}", f"/usr/local/sbin/{cmd}") if os.access(p, os.X_OK)),
            None,
        )
        if not path:
            continue
        out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"(\d+\.\d+\.\d+)", out)
        if m:
            return m.group(1)
    return None


def make(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["make", "-s", "-C", str(SPANK), *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, f"make {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)


def symbols(so: Path, which: str) -> dict[str, str]:
    """name -> value (defined) or type letter (undefined), from the dynamic symbol table."""
    out = run("nm", "-D", which, so).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if which == "--defined-only":
            table[parts[2]] = parts[0]
        else:
            table[parts[-1]] = parts[-2]
    return table


def read_u32(so: Path, address: int) -> int:
    """The 4 bytes at a virtual address of the .so, located through its LOAD segments."""
    for line in run("readelf", "-lW", so).stdout.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            offset, vaddr, filesz = int(f[1], 16), int(f[2], 16), int(f[4], 16)
            if vaddr <= address < vaddr + filesz:
                with open(so, "rb") as fh:
                    fh.seek(offset + address - vaddr)
                    return int.from_bytes(fh.read(4), sys.byteorder)
    raise AssertionError(f"address {address:#x} not in a LOAD segment of {so}")


def plugin_version_symbol(so: Path) -> int:
    return read_u32(so, int(symbols(so, "--defined-only")["plugin_version"], 16))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def source_listing() -> set[str]:
    return {p.name for p in SPANK.iterdir()}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, source_listing: set[str]) -> Path:
    """The plugin built against the installed headers into a temporary O= directory."""
    out = tmp_path_factory.mktemp("build")
    make(f"O={out}")
    return out


@pytest.fixture(scope="module")
def other_version() -> int:
    """A release whose major.minor differs from the installed headers' (24.11.5, or
    22.05.8 if those are 24.11)."""
    real = version_number(HEADERS)
    other = 0x180B05 if major_minor(spelled(real)) != "24.11" else 0x160508
    assert major_minor(spelled(other)) != major_minor(spelled(real))
    return other


@pytest.fixture(scope="module")
def other_headers(tmp_path_factory: pytest.TempPathFactory, other_version: int) -> Path:
    """The installed Slurm headers with another SLURM_VERSION_NUMBER: what another
    release's libslurm-dev looks like to this plugin."""
    root = tmp_path_factory.mktemp("other-include")
    shutil.copytree(HEADERS / "slurm", root / "slurm")
    header = root / "slurm" / "slurm_version.h"
    text, n = re.subn(
        r"^#define\s+SLURM_VERSION_NUMBER\s+\S+",
        f"#define SLURM_VERSION_NUMBER {other_version:#x}",
        header.read_text(),
        flags=re.M,
    )
    assert n == 1
    header.write_text(text)
    return root


@pytest.fixture(scope="module")
def other_build(tmp_path_factory: pytest.TempPathFactory, other_headers: Path) -> Path:
    out = tmp_path_factory.mktemp("build-other")
    make(f"O={out}", f"SPANK_INCLUDE={other_headers}")
    return out


@pytest.fixture(scope="module")
def installed() -> str:
    version = installed_slurm()
    if version is None:
        pytest.skip("no slurmd or sinfo installed: nothing for the install guard to compare")
    return version


# -------------------------------------------------------------------------------- tests
def test_exports_only_spank_entry_points_and_plugin_symbols(build: Path) -> None:
    exported = set(symbols(build / "spank_qpu.so", "--defined-only"))
    stray = {s for s in exported if not s.startswith("slurm_spank_") and s not in PLUGIN_SYMBOLS}
    assert not stray, f"exported beyond slurm_spank_* and the plugin symbols: {stray}"
    assert PLUGIN_SYMBOLS <= exported
    assert {s for s in exported if s.startswith("slurm_spank_")} == ENTRY_POINTS


def test_hardened(build: Path) -> None:
    so = build / "spank_qpu.so"
    dynamic = run("readelf", "-dW", so).stdout
    assert re.search(r"\(FLAGS\)\s+.*BIND_NOW", dynamic) or re.search(
        r"\(FLAGS_1\)\s+Flags:.*\bNOW\b", dynamic
    ), dynamic
    segments = run("readelf", "-lW", so).stdout
    assert re.search(r"^\s*GNU_RELRO\s", segments, re.M), segments
    stack = re.search(r"^\s*GNU_STACK\s.*\s(R?W?E?)\s+0x\w+\s*$", segments, re.M)
    assert stack, f"no GNU_STACK header (the default would be an executable stack):\n{segments}"
    assert "E" not in stack.group(1), stack.group(0)
    imported = set(symbols(so, "--undefined-only"))
    names = {s.split("@")[0] for s in imported}
    assert "__stack_chk_fail" in names, "no stack protector in the build"
    assert any(
        n.startswith("__") and n.endswith("_chk") and n != "__stack_chk_fail" for n in names
    ), f"_FORTIFY_SOURCE had no effect (no __*_chk calls): {names}"


def test_slurm_symbols_resolve_in_libslurmfull(build: Path) -> None:
    """With BIND_NOW a symbol Slurm does not provide makes dlopen fail, and a `required`
    plugin that does not load fails every job: every Slurm symbol must be in libslurmfull."""
    candidates = sorted(Path("/usr/lib").glob("*/slurm-wlm/libslurmfull.so")) + [
        p  # upstream's own install: $(libdir)/slurm/
        for p in map(
            Path, ("/usr/lib64/slurm/libslurmfull.so", "/usr/local/lib/slurm/libslurmfull.so")
        )
        if p.exists()
    ]
    if not candidates:
        pytest.skip("no libslurmfull.so installed (slurmd / slurm-client)")
    provided = set(symbols(candidates[0], "--defined-only"))
    wanted = {
        name
        for name, kind in symbols(build / "spank_qpu.so", "--undefined-only").items()
        if kind == "U" and "@" not in name  # libc's are versioned; weak ones may be absent
    }
    assert wanted, "expected the plugin to import slurm_error, spank_* ..."
    assert wanted <= provided, f"not in {candidates[0]}: {wanted - provided}"


def test_records_the_slurm_version_of_its_headers(build: Path) -> None:
    number = version_number(HEADERS)
    so = build / "spank_qpu.so"
    assert plugin_version_symbol(so) == number  # what Slurm's loader compares
    assert f"qpu_built_for_slurm={spelled(number)}".encode() in so.read_bytes()
    assert run(CHECK, "--built-for", so).stdout == spelled(number) + "\n"
    assert (build / "spank_qpu.so.slurm-version").read_text() == spelled(number) + "\n"


def test_records_another_slurms_version_when_built_against_its_headers(
    other_build: Path, other_version: int
) -> None:
    so = other_build / "spank_qpu.so"
    assert plugin_version_symbol(so) == other_version
    assert run(CHECK, "--built-for", so).stdout == spelled(other_version) + "\n"
    assert (other_build / "spank_qpu.so.slurm-version").read_text() == (
        spelled(other_version) + "\n"
    )


def test_plugin_version_defaults_to_the_package_version(tmp_path: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    dry = make(f"O={tmp_path}", "-n").stdout
    assert f"-DQPU_VERSION='\"{version}\"'" in dry
    make(f"O={tmp_path}", "QPU_VERSION=7.7.7-test")
    assert b"\x007.7.7-test\x00" in (tmp_path / "spank_qpu.so").read_bytes()


def test_check_version_match_and_mismatch(
    build: Path, other_build: Path, installed: str, other_version: int
) -> None:
    if major_minor(installed) != major_minor(spelled(version_number(HEADERS))):
        pytest.skip(f"installed Slurm {installed} is not the one of {HEADERS}/slurm")
    ok = run(CHECK, build / "spank_qpu.so")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"installed: Slurm {installed}" in ok.stdout
    bad = run(CHECK, other_build / "spank_qpu.so")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"built for: Slurm {spelled(other_version)}" in bad.stdout
    assert "MISMATCH" in bad.stdout
    junk = run(CHECK, CHECK)  # a file without a recorded version: cannot tell
    assert junk.returncode == 2


def test_install_accepts_a_plugin_for_the_installed_slurm(
    build: Path, installed: str, tmp_path: Path
) -> None:
    if major_minor(installed) != major_minor(spelled(version_number(HEADERS))):
        pytest.skip(f"installed Slurm {installed} is not the one of {HEADERS}/slurm")
    proc = make(f"O={build}", f"DESTDIR={tmp_path}", "LIBDIR=/lib/slurm", "install")
    target = tmp_path / "lib" / "slurm" / "spank_qpu.so"
    assert target.read_bytes() == (build / "spank_qpu.so").read_bytes()
    assert os.stat(target).st_mode & 0o777 == 0o755
    assert "ok" in proc.stdout


def test_install_refuses_a_plugin_for_another_slurm(
    other_build: Path, other_headers: Path, other_version: int, installed: str, tmp_path: Path
) -> None:
    args = (f"O={other_build}", f"SPANK_INCLUDE={other_headers}", f"DESTDIR={tmp_path}")
    proc = make(*args, "install", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("spank_qpu:")]
    assert len(lines) == 1, proc.stderr
    assert "refusing to install" in lines[0]
    assert f"built for Slurm {spelled(other_version)}" in lines[0]
    assert f"runs Slurm {installed}" in lines[0]
    assert "FORCE=1" in lines[0]
    assert not list(tmp_path.rglob("spank_qpu.so")), "installed despite the refusal"

    # FORCE=1 (packagers) installs it anyway, saying so
    forced = make(*args, "FORCE=1", "install")
    assert "FORCE=1" in forced.stderr
    assert len(list(tmp_path.rglob("spank_qpu.so"))) == 1


def test_install_guard_reads_the_plugin_not_the_sidecar(
    other_build: Path, other_headers: Path, installed: str, tmp_path: Path
) -> None:
    """The sidecar is for people; the guard reads the .so that would be installed, so an
    edited or stale sidecar cannot let a mismatched plugin through."""
    sidecar = other_build / "spank_qpu.so.slurm-version"
    original = sidecar.read_text()
    try:
        sidecar.write_text(installed + "\n")
        proc = make(
            f"O={other_build}",
            f"SPANK_INCLUDE={other_headers}",
            f"DESTDIR={tmp_path}",
            "install",
            check=False,
        )
        assert proc.returncode != 0 and "refusing to install" in proc.stderr, proc.stderr
    finally:
        sidecar.write_text(original)


def test_rebuild_into_the_same_directory_follows_the_headers(
    tmp_path: Path, other_headers: Path, other_version: int
) -> None:
    """Changing SPANK_INCLUDE (or any flag) for an existing O= recompiles: a stale object
    would record the previous Slurm."""
    make(f"O={tmp_path}", f"SPANK_INCLUDE={other_headers}")
    assert run(CHECK, "--built-for", tmp_path / "spank_qpu.so").stdout.strip() == spelled(
        other_version
    )
    make(f"O={tmp_path}")
    real = spelled(version_number(HEADERS))
    assert run(CHECK, "--built-for", tmp_path / "spank_qpu.so").stdout.strip() == real
    assert (tmp_path / "spank_qpu.so.slurm-version").read_text().strip() == real


def test_out_of_tree_builds_leave_the_source_directory_alone(
    build: Path, other_build: Path, source_listing: set[str]
) -> None:
    assert {p.name for p in SPANK.iterdir()} == source_listing
    assert (build / "spank_qpu.d").exists(), "no -MMD dependency files"


# ------------------------------------------- loading it the way Slurm does (no daemons)
HOST_C = r"""
/* A stand-in for the Slurm process that loads the plugin: it defines the Slurm symbols the
 * plugin imports (exported with -rdynamic), dlopens the .so with RTLD_NOW (as BIND_NOW
 * forces anyway) and calls its entry points in one context. Every log line is printed. */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <slurm/spank.h>

static spank_context_t ctx;
static struct spank_option opts[8];
static int nopts;

spank_context_t spank_context(void) { return ctx; }
static void say(const char *tag, const char *fmt, va_list ap)
{
    printf("%s: ", tag);
    vprintf(fmt, ap);
    printf("\n");
}
#define LOGGER(fn, tag) \
    void fn(const char *fmt, ...) \
    { \
        va_list ap; \
        va_start(ap, fmt); \
        say(tag, fmt, ap); \
        va_end(ap); \
    }
LOGGER(slurm_error, "error")
LOGGER(slurm_info, "info")
spank_err_t spank_option_register(spank_t sp, struct spank_option *opt)
{
    (void)sp;
    opts[nopts++] = *opt;
    return ESPANK_SUCCESS;
}
spank_err_t spank_option_getopt(spank_t sp, struct spank_option *opt, char **optarg)
{
    (void)sp; (void)opt; (void)optarg;
    return ESPANK_ERROR;
}
const char *spank_strerror(spank_err_t err) { (void)err; return "stub"; }
spank_err_t spank_get_item(spank_t sp, spank_item_t item, ...)
{
    (void)sp; (void)item;
    return ESPANK_ERROR; /* the job id is unreadable: exercises the error paths */
}
spank_err_t spank_setenv(spank_t sp, const char *var, const char *val, int overwrite)
{
    (void)sp; (void)var; (void)val; (void)overwrite;
    return ESPANK_ERROR;
}
spank_err_t spank_unsetenv(spank_t sp, const char *var)
{
    (void)sp; (void)var;
    return ESPANK_ERROR;
}

static int call(void *so, const char *name, int ac, char **av)
{
    spank_f *f = (spank_f *)dlsym(so, name);
    int rc = f ? f(NULL, ac, av) : 999;
    printf("%s rc=%d\n", name, rc);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct { const char *name; spank_context_t ctx; } ctxs[] = {
        {"slurmd", S_CTX_SLURMD}, {"remote", S_CTX_REMOTE}, {"local", S_CTX_LOCAL},
        {"allocator", S_CTX_ALLOCATOR}};
    void *so;
    for (size_t i = 0; i < sizeof(ctxs) / sizeof(ctxs[0]); i++)
        if (strcmp(argv[2], ctxs[i].name) == 0)
            ctx = ctxs[i].ctx;
    so = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        printf("dlopen: %s\n", dlerror());
        return 3;
    }
    call(so, "slurm_spank_init", argc - 3, argv + 3);
    for (int i = 0; i < nopts; i++)
        printf("option --%s\n", opts[i].name);
    if (nopts) {
        spank_opt_cb_f cb = opts[0].cb;
        printf("cb invalid rc=%d\n", cb(0, "no good!", 0));
        printf("cb first rc=%d\n", cb(0, "ibm_fez", 0));
        printf("cb again rc=%d\n", cb(0, "ibm_fez", 0));
        printf("cb other rc=%d\n", cb(0, "ibm_torino", 0));
        printf("cb other remote rc=%d\n", cb(0, "ibm_torino", 1));
    }
    call(so, "slurm_spank_job_prolog", argc - 3, argv + 3);
    call(so, "slurm_spank_task_init_privileged", argc - 3, argv + 3);
    call(so, "slurm_spank_job_epilog", argc - 3, argv + 3);
    return 0;
}
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("host")
    (d / "host.c").write_text(HOST_C)
    cc = _cc()
    assert cc
    proc = run(
        cc, "-std=gnu11", "-Wall", "-Werror", "-rdynamic", "-o", d / "host", d / "host.c", "-ldl"
    )
    assert proc.returncode == 0, proc.stderr
    return d / "host"


def load(host: Path, so: Path, context: str, *args: str) -> list[str]:
    proc = run(host, so, context, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_loads_with_bind_now_and_keeps_its_behaviour(host: Path, build: Path) -> None:
    so = build / "spank_qpu.so"
    args = ("config=/etc/qproxy/qproxy.toml", "qproxy=/usr/local/bin/qproxy")
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    banner = (
        f"info: spank_qpu: version {version}, built for Slurm {spelled(version_number(HEADERS))}"
    )

    for context in ("slurmd", "remote", "local", "allocator"):
        out = load(host, so, context, *args)
        # the version once in the daemons, never on a user's terminal
        assert out.count(banner) == (1 if context in ("slurmd", "remote") else 0), out
        assert "slurm_spank_init rc=0" in out
        assert [line for line in out if line.startswith("option ")] == [
            "option --q_backend",
            "option --q-backend",
        ]
        # the option callback: syntax only, idempotent, a second value only from remote
        assert "cb invalid rc=-1" in out
        assert "cb first rc=0" in out and "cb again rc=0" in out
        assert "cb other rc=-1" in out and "cb other remote rc=0" in out
        # prolog and epilog never fail (they would drain the node); the task init fails
        assert "slurm_spank_job_prolog rc=0" in out
        assert "slurm_spank_job_epilog rc=0" in out
        task_rc = -1 if context == "remote" else 0
        assert f"slurm_spank_task_init_privileged rc={task_rc}" in out
        # one prefix for every message
        logged = [line for line in out if line.startswith(("error: ", "info: "))]
        assert logged and all(line.split(": ", 1)[1].startswith("spank_qpu: ") for line in logged)
    assert "error: spank_qpu: cannot read the job id" in load(host, so, "remote", *args)

    bad = load(host, so, "slurmd", "colour=blue")
    assert "slurm_spank_init rc=-1" in bad
    assert "error: spank_qpu: unknown plugin argument 'colour=blue'" in bad
    assert "slurm_spank_job_prolog rc=0" in bad and "slurm_spank_job_epilog rc=0" in bad
    relative = load(host, so, "local", "qproxy=bin/qproxy")
    assert "error: spank_qpu: qproxy= must be an absolute path" in relative
