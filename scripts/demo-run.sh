#!/usr/bin/env bash
# Start a container from the freshly built image, fetch its page, remove it.
set -euo pipefail
image=$1 port=$2
name="rolebake-demo-$$"
.venv/bin/python - "$image" "$port" "$name" <<'PY'
import sys, time, urllib.request
import docker

image, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
client = docker.from_env()
container = client.containers.run(image, name=name, detach=True,
                                  ports={"8080/tcp": ("127.0.0.1", port)})
try:
    url = f"http://127.0.0.1:{port}/"
    for _ in range(60):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read().decode()
            break
        except OSError:
            time.sleep(0.5)
    else:
        sys.exit(f"demo: {url} did not answer; container logs:\n" + container.logs().decode())
    print(f"demo: {image} answers on {url}:")
    print("\n".join("  " + line for line in body.strip().splitlines()))
finally:
    container.remove(force=True)
PY
