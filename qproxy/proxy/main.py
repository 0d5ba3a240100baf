"""``qproxy serve``: one job's proxy (``--job-id ...``, started by the prolog) or an idle spare
(``--spare ID --config PATH``) that a prolog later hands its job to. This module only picks
which, so that neither imports the other's start-up path (the spare calls the proxy's main
once claimed; the proxy never needs the spare)."""

from __future__ import annotations

import sys

# `qproxy serve` as a process: everything is written, closed and fsync'ed when main returns;
# qproxy.cli then exits without tearing the interpreter down (see there).
EXIT_AT_ONCE = True


def main(argv: list[str]) -> int:
    if argv[:1] == ["--spare"]:
        from qproxy.proxy.lifecycle import setup_logging
        from qproxy.proxy.spare import serve_spare

        setup_logging()
        if len(argv) != 4 or argv[2] != "--config":
            print("usage: qproxy serve --spare ID --config PATH", file=sys.stderr)
            return 2
        return serve_spare(argv[1], argv[3])
    if "--relay-to" in argv:  # a multi-node job's relay: no vendor key (qproxy.proxy.relay)
        from qproxy.proxy.relay.process import main as relay_main

        return relay_main(argv)
    from qproxy.proxy.serve import main as serve_main

    return serve_main(argv)
