"""Throwaway Google service-account files, for local runs and tests against `nudge mock-providers`.

The file has the fields of a real one (`type`, `project_id`,
`private_key_id`, `private_key` as PKCS#8 PEM, `client_email`, `token_uri`),
with a fresh 2048-bit RSA key and `token_uri` pointing at the mock. It is
written with mode 0600, like any key.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["public_key_pem", "service_account", "write_service_account"]


def service_account(*, token_uri: str, project_id: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": f"nudge-local@{project_id}.iam.gserviceaccount.com",
        "client_id": str(uuid.uuid4().int)[:21],
        "token_uri": token_uri,
    }


def write_service_account(path: Path, *, token_uri: str, project_id: str) -> dict[str, Any]:
    doc = service_account(token_uri=token_uri, project_id=project_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    return doc


def public_key_pem(private_key_pem: str) -> bytes:
    """The PEM public key of a PEM private key (ValueError when it is not one)."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
