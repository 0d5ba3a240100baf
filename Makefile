# The two commands in the README: `make demo` and `make test`.
PYTHON ?= python3
PIP_FLAGS ?= --quiet --disable-pip-version-check --root-user-action=ignore

.PHONY: install test test-unit demo bench lint plugin deb rpm clean

install:
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

plugin:
	$(MAKE) -C spank_hooks

# Debian packages into DEB_OUT, out of tree and reproducibly (packaging/deb/build): qproxy
# (all) and qproxy-spank-slurm-X.Y for each directory of SPANK_INCLUDES holding a Slurm
# release's slurm/spank.h, e.g. SPANK_INCLUDES=/var/lib/qproxy/chroots/trixie/usr/include
DEB_OUT ?= build/deb
SPANK_INCLUDES ?= /usr/include
deb:
	packaging/deb/build $(DEB_OUT) $(SPANK_INCLUDES)

# RPM packages for RHEL-family centres into RPM_OUT (packaging/rpm/build, Debian's rpmbuild):
# qproxy (noarch) and qproxy-spank-V-1.slMAJMIN per SPANK_INCLUDES, pyxis' convention
RPM_OUT ?= build/rpm
rpm:
	packaging/rpm/build $(RPM_OUT) $(SPANK_INCLUDES)

# Local single-node Slurm + emulator, then the three user flows in examples/ (needs root).
demo: install
	scripts/demo

# Every test on the host's Slurm (22.05), then tests/slurm + tests/slurm_mode on Debian
# trixie's 24.11 and sid's 26.05 (chroots + network namespaces): scripts/test.
test: install
	$(PYTHON) scripts/test

# What runs anywhere, in seconds: no emulator process, no Slurm daemons.
test-unit: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

# Benchmarks: each cost as a ratio against its baseline, measured in the same run.
bench: install
	$(PYTHON) -m bench.run

lint:
	$(PYTHON) -m pip install $(PIP_FLAGS) ruff mypy
	# scripts/'s commands have no .py suffix: ruff checks them only when named
	$(PYTHON) -m ruff check qproxy qiskit_slurm_provider tests bench scripts \
		scripts/cluster scripts/slurmroot scripts/test
	# strict (see [tool.mypy] in pyproject.toml), the local cluster package too
	$(PYTHON) -m mypy qproxy qiskit_slurm_provider scripts/localcluster
	$(PYTHON) -m mypy scripts/test   # the test matrix runner (a file of its own: no package)

clean:
	rm -rf build dist *.egg-info .pytest_cache
