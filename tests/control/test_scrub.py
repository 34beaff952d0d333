"""Model code gets the platform's environment minus every credential."""

from __future__ import annotations

from modelhost.control.scrub import scrubbed

ADMIN_TOKEN = "mh_admin_0123456789abcdef0123456789abcdef"
REGISTRY_SECRET = "registry-secret-fedcba9876543210"

PLATFORM_ENV = {
    # what model code may see
    "PATH": "/usr/local/bin:/usr/bin",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "2",
    "HF_HOME": "/srv/cache/huggingface",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "TEST_PLATFORM_MARKER": "4f1c2a9e0b7d4c3a8e6f5d2c1b0a9f8e",
    "PIP_INDEX_URL": "https://pypi.org/simple",
    # what it may not
    "MODELHOST_ADMIN_TOKEN": ADMIN_TOKEN,
    "MODELHOST_HOME": "/var/lib/modelhost",
    "MLFLOW_TRACKING_TOKEN": REGISTRY_SECRET,
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": "hunter2hunter2",
    "MLFLOW_REGISTRY_URI": "databricks-uc",
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE",
    "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountKey=abc",
    "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp/key.json",
    "DATABRICKS_TOKEN": "dapi0123456789abcdef",
    "HF_TOKEN": "hf_0123456789abcdef",
    "PGPASSWORD": "s3cret-pg-pass",
    "MYSQL_PWD": "s3cret-mysql",
    "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock",
    "DATABASE_URL": "postgresql://modelhost:db-pass@db.internal:5432/modelhost",
    "BACKUP_ADMIN": ADMIN_TOKEN,  # a secret under a name that does not say so
    "REGISTRY_HEADER": f"Bearer {REGISTRY_SECRET}",
    "SERVED_WITH": "flag-only-admin-token-0123456789",  # the token given as --admin-token
}
KEPT = {
    "PATH",
    "LANG",
    "OMP_NUM_THREADS",
    "HF_HOME",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "TEST_PLATFORM_MARKER",
    "PIP_INDEX_URL",
}


def test_model_code_gets_no_credential_and_keeps_the_rest():
    scrubbed_env = scrubbed(PLATFORM_ENV, secrets=["flag-only-admin-token-0123456789", None])

    assert set(scrubbed_env) == KEPT
    assert scrubbed_env == {name: PLATFORM_ENV[name] for name in KEPT}
    for secret in (ADMIN_TOKEN, REGISTRY_SECRET, "db-pass", "hunter2hunter2"):
        assert not any(secret in value for value in scrubbed_env.values()), secret


def test_short_values_of_secret_names_do_not_hide_ordinary_variables():
    env = {"SOME_TOKEN": "1", "WORKERS": "1", "USE_AUTH": "false", "LANG": "false"}
    assert scrubbed(env) == {"WORKERS": "1", "LANG": "false"}


def test_a_uri_without_a_password_is_kept():
    env = {"PROXY": "http://proxy.internal:3128", "INDEX": "https://user@pypi.internal/simple"}
    assert scrubbed(env) == env
