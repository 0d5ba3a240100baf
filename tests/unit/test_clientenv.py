"""The client environment's QRMI part: names QRMI 0.26's ibm-quantum-compute-service reads,
all pointing at the same proxy with the same per-job token."""

from __future__ import annotations

from qproxy.clientenv import CLIENT_ENV_NAMES, client_env, qrmi_env, qrmi_env_names

INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/x:y::"


def test_qrmi_env_points_at_the_proxy_with_the_job_token() -> None:
    client = client_env("http://127.0.0.1:4321/", "job-token", INSTANCE)
    env = qrmi_env("ibm_fez", client, 600)
    assert env == {
        "QRMI_JOB_QPU_RESOURCES": "ibm_fez",
        "QRMI_JOB_QPU_TYPES": "ibm-quantum-compute-service",
        "ibm_fez_QRMI_IBM_QCS_ENDPOINT": "http://127.0.0.1:4321/api/v1",
        "ibm_fez_QRMI_IBM_QCS_IAM_ENDPOINT": "http://127.0.0.1:4321",
        "ibm_fez_QRMI_IBM_QCS_IAM_APIKEY": "job-token",
        "ibm_fez_QRMI_IBM_QCS_SERVICE_CRN": INSTANCE,
        "ibm_fez_QRMI_JOB_TIMEOUT_SECONDS": "600",
    }
    assert sorted(env) == sorted(qrmi_env_names("ibm_fez"))
    assert not set(env) & set(CLIENT_ENV_NAMES)


def test_qrmi_timeout_unlimited_or_spent() -> None:
    client = client_env("http://127.0.0.1:1", "t", INSTANCE)
    assert "ibm_fez_QRMI_JOB_TIMEOUT_SECONDS" not in qrmi_env("ibm_fez", client, None)
    # a job past its end time still gets a positive cost (the proxy refuses the work itself)
    assert qrmi_env("ibm_fez", client, -5)["ibm_fez_QRMI_JOB_TIMEOUT_SECONDS"] == "1"


def test_qrmi_needs_an_environment_name_prefix() -> None:
    client = client_env("http://127.0.0.1:1", "t", INSTANCE)
    assert qrmi_env("ibm-fez", client, 60) == {}
    assert qrmi_env("fez.1", client, 60) == {}
    assert qrmi_env("Fez_2", client, 60)["QRMI_JOB_QPU_RESOURCES"] == "Fez_2"
