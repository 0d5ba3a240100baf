from qproxy.cli import main

raise SystemExit(main())
