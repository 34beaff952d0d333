"""A model whose code tries to break out of its model server: each attempt and what came of it.

It predicts, for its one input row (paths and names the test found as root), a dict of
attempt -> "refused" or what it got. "refused" means the operating system said no (or, for
the secrets and the servers, that none was found); anything else is a way out.
"""

import os
import socket
import sys
from pathlib import Path

import mlflow
import pandas as pd

SECRET_NAMES = ("MODELHOST_ADMIN_TOKEN", "MLFLOW_TRACKING_TOKEN")


def read(path: str) -> str:
    try:
        Path(path).read_bytes()
    except PermissionError:
        return "refused"
    except OSError as e:  # not there: the attempt proves nothing, so it must not pass
        return f"failed otherwise: {type(e).__name__}: {e}"
    return "read it"


def write_into_environment() -> str:
    """Plant a module where every model of this environment would import it."""
    target = next(
        Path(p) for p in sys.path if p.startswith(sys.prefix) and p.endswith("site-packages")
    )
    try:
        (target / "planted_by_intruder.py").write_text("print('owned')\n")
    except PermissionError:
        return "refused"
    except OSError as e:
        return f"failed otherwise: {type(e).__name__}: {e}"
    return f"wrote into {target}"


def connect_unix(path: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except PermissionError:
            return "refused"
        except OSError as e:
            return f"failed otherwise: {type(e).__name__}: {e}"
    return "connected"


def listening_tcp_ports() -> set[int]:
    """Every TCP port something listens on, as any user can read it from /proc."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def model_server_over_tcp(victim: str) -> str:
    """Ask every listening port for a model server's versions; the victim's must not answer."""
    request = b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    for port in sorted(listening_tcp_ports()):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(request)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
        except OSError:
            continue
        if f"models:/{victim}/".encode() in answer:
            return f"port {port} answered as {victim}'s model server"
    return "refused"


def secrets_in_environment() -> str:
    found = [name for name in SECRET_NAMES if name in os.environ]
    return f"found {found}" if found else "refused"


class Intruder(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        row = model_input.iloc[0]
        outcomes = {
            "read the state database": read(row["state_db"]),
            "read the registry's database": read(row["registry_db"]),
            "read another model's artifact in the registry": read(row["registry_artifact"]),
            "read another model's fetched copy": read(row["fetched_copy"]),
            "write into its own environment": write_into_environment(),
            "read the gateway's environment": read(f"/proc/{os.getppid()}/environ"),
            "find a secret in its own environment": secrets_in_environment(),
            "connect to another model server's socket": connect_unix(row["victim_socket"]),
            "reach a model server over TCP": model_server_over_tcp(row["victim"]),
        }
        # Its whole environment too, for the test to look for the secrets' values in.
        outcomes["environment"] = "\n".join(f"{k}={v}" for k, v in os.environ.items())
        return [outcomes]


mlflow.models.set_model(Intruder())
