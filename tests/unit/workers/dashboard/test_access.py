import pytest
from pydantic import SecretStr, ValidationError

from workers.dashboard.access import check_login
from workers.dashboard.settings import AuthSettings, DashboardSettings


def test_the_console_has_no_open_mode(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("LINEWATCH_AUTH__PASSWORD", "LINEWATCH_AUTH__TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="auth"):
        DashboardSettings(redis={"url": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ValidationError, match="no open mode"):
        AuthSettings()
    with pytest.raises(ValidationError, match="at least 8"):
        AuthSettings(password=SecretStr("short"))


def test_login_checks_user_password_or_token():
    auth = AuthSettings(username="ana", password=SecretStr("pass-word-1"),
                        token=SecretStr("token-12345"))
    assert check_login(auth, {"username": "ana", "password": "pass-word-1"}) == "ana"
    assert check_login(auth, {"username": "bob", "password": "pass-word-1"}) is None
    assert check_login(auth, {"username": "ana", "password": "pass-word-2"}) is None
    assert check_login(auth, {"token": "token-12345", "username": "lee"}) == "token:lee"
    assert check_login(auth, {"token": "token-12346"}) is None
    password_only = AuthSettings(password=SecretStr("pass-word-1"))
    assert check_login(password_only, {"token": ""}) is None
