"""`qproxy secrets init-key | set NAME | get NAME | list`: manage the admin's vendor secrets.

``set`` reads the value from stdin (never argv, which other users can see in ps).
"""

from __future__ import annotations

import argparse
import sys

from qproxy import config as cfg
from qproxy.secrets import SecretsError, get_secret, init_key, read_table, set_secret


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qproxy secrets", description=__doc__)
    parser.add_argument("--config", default=str(cfg.DEFAULT_CONFIG_PATH))
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("init-key", help="create the Fernet key file (mode 0600)")
    s = sub.add_parser("set", help="store NAME, value read from stdin (encrypted)")
    s.add_argument("name")
    s.add_argument("--plain", action="store_true", help="store unencrypted")
    g = sub.add_parser("get", help="print the decrypted value of NAME")
    g.add_argument("name")
    sub.add_parser("list", help="list secret names (not values)")
    args = parser.parse_args(argv)
    try:
        conf = cfg.load(args.config)
        if args.cmd == "init-key":
            init_key(conf.secrets_key_file)
            print(f"wrote {conf.secrets_key_file}")
        elif args.cmd == "set":
            value = sys.stdin.readline().rstrip("\r\n")
            if not value:
                print("qproxy secrets: empty value on stdin", file=sys.stderr)
                return 2
            set_secret(conf, args.name, value, encrypt=not args.plain)
            print(f"stored {args.name} in {conf.secrets_file}")
        elif args.cmd == "get":
            print(get_secret(conf, args.name))
        else:
            for name, value in sorted(read_table(conf.secrets_file).items()):
                kind = "encrypted" if value.startswith("fernet:") else "plain"
                print(f"{name}\t{kind}")
    except (cfg.ConfigError, SecretsError) as exc:
        print(f"qproxy secrets: {exc}", file=sys.stderr)
        return 1
    return 0
