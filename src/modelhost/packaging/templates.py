"""The files of a bundle that are text: its start script, its README and its Dockerfile."""

from __future__ import annotations

from dataclasses import dataclass

# Where `serve` (and the Dockerfile) install the bundle, relative to it, and the file that says
# the installation finished: a half-made environment is made again on the next start.
VENV = ".venv"
INSTALLED_MARKER = ".bundle-installed"
PORT = 5000

_SERVE = """\
#!/bin/sh
# Serves the model of this bundle with modelhost, installed from the bundle's own wheels.
#   ./serve [--host H] [--port P] [any other `modelhost serve` option]
#   ./serve --install-only     only install (the first run does it otherwise)
# PYTHON names the interpreter to install with (default: python3); it must be Python @PY@.
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P)
venv="$here/@VENV@"
python="${PYTHON:-python3}"

if [ ! -f "$venv/@MARKER@" ]; then
    have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || {
        echo "serve: cannot run $python: set PYTHON to a Python @PY@ interpreter." >&2
        exit 1
    }
    if [ "$have" != "@PY@" ]; then
        echo "serve: this bundle holds wheels for Python @PY@, but $python is Python $have:" \\
            "set PYTHON to a Python @PY@ interpreter." >&2
        exit 1
    fi
    echo "serve: installing modelhost and the model's packages into $venv (first run only)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # From the wheels alone, whatever this machine's pip configuration says: no network needed.
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip --isolated install --quiet \\
        --no-index --find-links "$here/wheels" --disable-pip-version-check \\
        --requirement "$here/requirements.txt"
    touch "$venv/@MARKER@"
fi

if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi
# This environment was made for the model: serve in it, never build another (no network).
export MODELHOST_ENV_MANAGER=local
exec "$venv/bin/python" -m modelhost serve --model-uri "$here/model" "$@"
"""

_DOCKERFILE = """\
# Serves @URI@ with modelhost. The build needs no network: everything is in this folder.
#   docker build -t IMAGE .
#   docker run -p @PORT@:@PORT@ IMAGE [any other `modelhost serve` option]
FROM python:@PY@-slim
WORKDIR /bundle
COPY . /bundle
# Installed from the bundle's wheels alone (--no-index), as ./serve would on its first run.
RUN python -m venv /bundle/@VENV@ \\
    && PIP_CONFIG_FILE=/dev/null /bundle/@VENV@/bin/python -m pip --isolated install \\
        --no-index --find-links /bundle/wheels --no-cache-dir --disable-pip-version-check \\
        --requirement /bundle/requirements.txt \\
    && touch /bundle/@VENV@/@MARKER@
EXPOSE @PORT@
ENTRYPOINT ["/bundle/serve", "--host", "0.0.0.0", "--port", "@PORT@"]
"""

_DOCKERIGNORE = f"""\
# A local environment made by ./serve belongs to this machine, not to the image.
{VENV}
"""

_README = """\
modelhost bundle of {uri}

Made {made} by modelhost {modelhost_version}, with MLflow {mlflow_version}, for
Python {python} on {platform}. It serves the model with no network.

  model/             the model's artifacts
  wheels/            {wheel_count} wheels ({wheels_size}): modelhost, MLflow and every package
                     the model needs
  requirements.txt   the exact version of each, installed from wheels/
  serve              installs (first run only) and starts the model server{dockerfile_line}

Run it on a machine with Python {python} (and its venv module):

  ./serve --host 0.0.0.0 --port {port}

The first run makes a virtual environment in {venv}/ and installs wheels/ into it with pip
--no-index (a minute or so); later runs start at once. The bundle works from any folder and
may be moved; any other `modelhost serve` option may follow, e.g. --workers 2, and
PYTHON=/path/to/python{python} ./serve picks the interpreter. Then score it:

  curl -s http://127.0.0.1:{port}/invocations -H 'Content-Type: application/json' \\
    -d @model/serving_input_example.json   # the input example logged with the model
{docker_section}"""

_DOCKERFILE_LINE = "\n  Dockerfile         builds an image that serves it"

_DOCKER_SECTION = """
Or build an image (no network needed at build time) and run it:

  docker build -t IMAGE .
  docker run -p {port}:{port} IMAGE
"""


@dataclass(frozen=True)
class BundleFacts:
    """What the bundle's texts say about it."""

    model_uri: str
    python_version: str
    platform: str
    made: str
    modelhost_version: str
    mlflow_version: str
    wheel_count: int
    wheels_size: str
    dockerfile: bool


def serve_script(facts: BundleFacts) -> str:
    return _fill(_SERVE, facts)


def dockerfile(facts: BundleFacts) -> str:
    return _fill(_DOCKERFILE, facts)


def dockerignore() -> str:
    return _DOCKERIGNORE


def readme(facts: BundleFacts) -> str:
    return _README.format(
        uri=facts.model_uri,
        made=facts.made,
        modelhost_version=facts.modelhost_version,
        mlflow_version=facts.mlflow_version,
        python=facts.python_version,
        platform=facts.platform,
        wheel_count=facts.wheel_count,
        wheels_size=facts.wheels_size,
        dockerfile_line=_DOCKERFILE_LINE if facts.dockerfile else "",
        port=PORT,
        venv=VENV,
        docker_section=_DOCKER_SECTION.format(port=PORT) if facts.dockerfile else "",
    )


def _fill(template: str, facts: BundleFacts) -> str:
    # Placeholders rather than str.format: shell and JSON text are full of braces.
    for key, value in {
        "@PY@": facts.python_version,
        "@URI@": facts.model_uri,
        "@VENV@": VENV,
        "@MARKER@": INSTALLED_MARKER,
        "@PORT@": str(PORT),
    }.items():
        template = template.replace(key, value)
    return template
