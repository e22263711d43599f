#!/usr/bin/env python3
"""Stand-ins for the release binaries, for scripts/test_up.sh: linked as emostream-config,
emostream-gateway, emostream-dataflow and emostream-broadcaster, each reads the same --config file
and listens where the real one would (a dataflow process listens nowhere); emostream-config
answers what up.sh asks. STUB_FAIL=TIER makes
that tier exit 1 at once, STUB_DIE=TIER makes it exit 7 after a second; TIER is gateway,
dataflow, main, or a cluster or subscriber name."""
import os
import socket
import sys
import time
import tomllib

binary = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(args[args.index("--config") + 1], "rb") as f:
    config = tomllib.load(f)
clusters = {c["name"]: c for c in config["broadcaster"]["clusters"]}


def flag(name):
    return args[args.index(name) + 1]


if binary == "emostream-config":
    command = args[2:]
    if command[0] == "get":
        value = config
        for key in command[1].split("."):
            value = value[key]
        print("\n".join(value) if isinstance(value, list) else value)
    elif command[0] == "clusters":
        for c in clusters.values():
            print(c["name"], c["listen"], ",".join(c["subscribers"]))
    sys.exit(0)

if binary == "emostream-dataflow":
    tier, listen = "dataflow", None
elif binary == "emostream-gateway":
    tier, listen = "gateway", config["gateway"]["listen"]
elif "main" in args:
    tier, listen = "main", config["broadcaster"]["main"]
elif "cluster" in args:
    tier = flag("--name")
    listen = clusters[tier]["listen"]
else:
    tier = flag("--name")
    cluster, index = tier.rsplit("-s", 1)
    listen = clusters[cluster]["subscribers"][int(index)]

print(f"stub {tier}: pid {os.getpid()}, listening on {listen}", flush=True)
if os.environ.get("STUB_FAIL") == tier:
    print(f"stub {tier}: failing at start", flush=True)
    sys.exit(1)
if listen:
    host, port = listen.rsplit(":", 1)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(port)))
    server.listen()
deadline = time.monotonic() + (1 if os.environ.get("STUB_DIE") == tier else 1e9)
while time.monotonic() < deadline:
    time.sleep(0.1)
print(f"stub {tier}: dying", flush=True)
sys.exit(7)
