"""Admission: tokens, certificates, revocations, and the state every member keeps."""

from __future__ import annotations

import pytest

from mesh.core.admission import (
    AdmissionState,
    Certificate,
    check_token,
    issue_certificate,
    issue_revocation,
    make_token,
    parse_token,
)
from mesh.core.identity import Identity
from mesh.errors import ProtocolError, Unauthorized

ADMIN = Identity(b"A" * 32)
OTHER_ADMIN = Identity(b"O" * 32)
HOST = Identity(b"h" * 32)
NONCE = b"12345678"


def test_token_made_by_the_admin_is_accepted_until_it_expires():
    token = make_token(ADMIN, NONCE, expires_at=1000)
    assert parse_token(token).mesh_id == ADMIN.node_id
    assert check_token(ADMIN, token, now=999).expires_at == 1000
    with pytest.raises(Unauthorized, match="expired"):
        check_token(ADMIN, token, now=1001)


@pytest.mark.parametrize("mutate,why", [
    (lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"), "not valid"),
    (lambda t: t.replace("-1000-", "-9000-"), "not valid"),
    (lambda t: "ELTON1-garbage", "malformed"),
    (lambda t: make_token(OTHER_ADMIN, NONCE, 1000), "another mesh"),
])
def test_tampered_or_foreign_tokens_are_refused(mutate, why):
    with pytest.raises(Unauthorized, match=why):
        check_token(ADMIN, mutate(make_token(ADMIN, NONCE, 1000)), now=0)


def test_certificate_binds_key_cluster_and_role():
    cert = issue_certificate(ADMIN, HOST.public_key, "eu-west", "master", 5.0)
    state = AdmissionState(ADMIN.public_key)
    assert state.add_certificate(cert) and not state.add_certificate(cert)
    assert state.status(HOST.node_id) == "admitted" and cert.node_id == HOST.node_id
    forged = Certificate(cert.public_key, "us-east", cert.role, cert.issued_at, cert.signature)
    with pytest.raises(ProtocolError, match="bad_certificate"):
        AdmissionState(ADMIN.public_key).add_certificate(forged)
    foreign = issue_certificate(OTHER_ADMIN, HOST.public_key, "eu-west", "master", 5.0)
    with pytest.raises(ProtocolError):
        AdmissionState(ADMIN.public_key).add_certificate(foreign)


def test_revocation_wins_over_certificates_old_and_new():
    state = AdmissionState(ADMIN.public_key)
    state.add_certificate(issue_certificate(ADMIN, HOST.public_key, "a", "master", 1.0))
    assert state.add_revocation(issue_revocation(ADMIN, HOST.node_id, 2.0))
    assert state.status(HOST.node_id) == "revoked"
    assert not state.add_certificate(issue_certificate(ADMIN, HOST.public_key, "a", "master", 3.0))
    assert state.status(HOST.node_id) == "revoked"
    with pytest.raises(ProtocolError, match="bad_revocation"):
        state.add_revocation(issue_revocation(OTHER_ADMIN, ADMIN.node_id, 2.0))


def test_state_round_trips_and_unknown_keys_are_unadmitted():
    state = AdmissionState(ADMIN.public_key)
    state.add_certificate(issue_certificate(ADMIN, HOST.public_key, "a", "store", 1.0))
    state.add_revocation(issue_revocation(ADMIN, "00" * 20, 2.0))
    again = AdmissionState.from_wire(state.to_wire())
    assert again == state and again.mesh_id == ADMIN.node_id
    assert again.status("11" * 20) == "unadmitted"


@pytest.mark.parametrize("bad", [None, [], [b"x"], [b"x" * 32, "a", "r", 1.0, b"s"],
                                 [b"x" * 32, "bad cluster!", "r", 1.0, b"s" * 64],
                                 [b"x" * 32, "a", "r", float("nan"), b"s" * 64]])
def test_malformed_certificates_are_protocol_errors(bad):
    with pytest.raises(ProtocolError):
        Certificate.from_wire(bad)
