"""Dashboard access: grants by e-mail or group claim from clinics.toml, and how the launcher configures sign-in."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from alliance.clinics import parse_clinics
from alliance.errors import ConfigError
from alliance.settings import load_settings
from dashboards import launch
from dashboards.access import load_access, parse_access, viewer_of

ACCESS = {
    "access": {
        "groups_claim": "roles",
        "grants": [
            {"email": "Lee@Northside.example", "clinics": ["northside"]},
            {"group": "rheinpark-supervisors", "clinics": ["rheinpark"]},
            {"group": "network-leads", "role": "network"},
        ],
    }
}
CLINICS = {"northside", "rheinpark", "harbor"}


@pytest.mark.parametrize(
    ("claims", "clinics", "network", "identity"),
    [
        ({"sub": "1", "email": "lee@northside.example"}, {"northside"}, False, "lee@northside.example"),
        ({"sub": "2", "email": "kim@x.example", "roles": ["rheinpark-supervisors"]}, {"rheinpark"}, False, "kim@x.example"),
        ({"sub": "3", "email": "lee@northside.example", "roles": "rheinpark-supervisors"}, {"northside", "rheinpark"}, False, "lee@northside.example"),
        ({"sub": "4", "roles": ["network-leads"]}, set(), True, "4"),
        ({"sub": "5", "email": "someone@else.example", "groups": ["network-leads"]}, set(), False, "someone@else.example"),
        ({"sub": "6", "email": "lee@northside.example", "email_verified": False}, set(), False, "6"),
    ],
    ids=["email", "group", "both", "network-role", "other-claim-ignored", "unverified-email"],
)  # fmt: skip
def test_who_sees_which_clinic(claims: dict, clinics: set[str], network: bool, identity: str) -> None:
    viewer = viewer_of(claims, parse_access(ACCESS, CLINICS))
    assert (set(viewer.clinics), viewer.network, viewer.identity) == (clinics, network, identity)
    assert viewer.may_see("harbor") is network


def test_an_identity_is_plain_text() -> None:
    viewer = viewer_of({"sub": "x", "email": "lee@n.example\x1b[2J<!channel>"}, parse_access({}, CLINICS))
    assert viewer.identity == "lee@n.example\u2039!channel\u203a"


@pytest.mark.parametrize(
    ("grants", "message"),
    [
        ([{"email": "a@b.example", "clinics": ["nowhere"]}], r"access.grants.0: unknown clinic\(s\) \['nowhere'\]"),
        ([{"email": "a@b.example"}], "a supervisor grant needs clinics"),
        ([{"email": "a@b.example", "group": "g", "clinics": ["harbor"]}], "exactly one of email or group"),
        ([{"group": "g", "role": "admin"}], "access.grants.0.role"),
    ],
)
def test_bad_grants_are_refused_with_their_place(grants: list[dict], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_access({"access": {"grants": grants}}, CLINICS)


def test_clinics_toml_may_hold_the_access_table(tmp_path: Path) -> None:
    text = """
[clinics.northside]
name = "Northside"
snapshot_group = "alliance-northside"
[clinics.northside.export]
instruments = ["SRS"]
columns = { "Client" = "client_ref", "Therapist" = "therapist_id", "Date" = "session_date", "No" = "session_number", "Total" = "srs_total" }

[[access.grants]]
email = "lee@northside.example"
clinics = ["northside"]
"""
    assert parse_clinics(text)["northside"].snapshot_group == "alliance-northside"
    path = tmp_path / "clinics.toml"
    path.write_text(text)
    assert viewer_of({"email": "lee@northside.example"}, load_access(path)).clinics == {"northside"}


def test_sign_in_from_settings_writes_an_owner_only_secrets_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLIANCE_OIDC_METADATA_URL", "https://idp.example/.well-known/openid-configuration")
    monkeypatch.setenv("ALLIANCE_OIDC_CLIENT_ID", "alliance-dashboard")
    monkeypatch.setenv("ALLIANCE_OIDC_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("ALLIANCE_DASHBOARD_URL", "https://watch.example.org/")
    settings = load_settings(tmp_path)
    (path,) = launch.secrets_files(settings, 8501)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    auth = tomllib.loads(path.read_text())["auth"]
    assert auth["redirect_uri"] == "https://watch.example.org/oauth2callback"
    assert auth["client_secret"] == "s3cret" and len(auth["cookie_secret"]) >= 32
    assert launch.has_sign_in((path,))
    command = launch.command(8501, "0.0.0.0", (path,))
    assert command[command.index("--secrets.files") + 1] == str(path)


def test_half_configured_sign_in_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLIANCE_OIDC_CLIENT_ID", "alliance-dashboard")
    with pytest.raises(ConfigError, match="needs ALLIANCE_OIDC_METADATA_URL, ALLIANCE_OIDC_CLIENT_ID and"):
        launch.secrets_files(load_settings(tmp_path), 8501)


def test_a_public_address_without_sign_in_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLIANCE_DASHBOARD_ADDRESS", "0.0.0.0")
    with pytest.raises(ConfigError, match="serves beyond this machine only with sign-in"):
        launch.start(tmp_path, None, 8501, load_settings(tmp_path))
    assert launch.is_loopback("127.0.0.1") and launch.is_loopback("::1") and not launch.is_loopback("0.0.0.0")
