"""Deployment engine tooling: certificates, Flower 1.39 processes, a local TLS federation.

No ML here; the apps are ``iotad.fl.server_app`` / ``iotad.fl.client_app``.
"""

from iotad.deploy.certs import CertError, CertPaths, generate_certs
from iotad.deploy.federation import LocalFederation
from iotad.deploy.local_stack import run_local_federation
from iotad.deploy.processes import DeployError, ManagedProcess, ProcessRegistry, free_port
from iotad.deploy.runs import (
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_LOST,
    STATUS_REJECTED,
    STATUS_STOPPED,
    STATUS_TIMEOUT,
    RunHandle,
    RunResult,
)

__all__ = [
    "STATUS_COMPLETED",
    "STATUS_FAILED",
    "STATUS_LOST",
    "STATUS_REJECTED",
    "STATUS_STOPPED",
    "STATUS_TIMEOUT",
    "CertError",
    "CertPaths",
    "DeployError",
    "LocalFederation",
    "ManagedProcess",
    "ProcessRegistry",
    "RunHandle",
    "RunResult",
    "free_port",
    "generate_certs",
    "run_local_federation",
]
