"""Settings of the operator's console (``python -m workers.dashboard``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, model_validator

from pipeline.settings import HttpSettings, ProcessSettings, RedisSettings


class AuthSettings(BaseModel):
    """Who may open the console: a user/password login, a token, or both.

    The browser gets a signed session cookie (HttpOnly, SameSite=Strict) after the login;
    scripts may send ``Authorization: Bearer <token>`` instead.
    """

    username: str = Field(default="operator", min_length=1, max_length=64,
                          description="User name of the password login.")
    password: SecretStr | None = Field(default=None, description="Password of the login.")
    token: SecretStr | None = Field(
        default=None, description="Access token (login form or Authorization: Bearer).")
    session_secret: SecretStr | None = Field(
        default=None, description="Key that signs session cookies; unset: a random key per "
        "start (sessions end when the process restarts).")
    session_max_age_s: int = Field(default=12 * 3600, ge=60, description="Session lifetime.")
    https_only: bool = Field(
        default=False, description="Mark the session cookie Secure (set it behind TLS).")

    @model_validator(mode="after")
    def _needs_a_credential(self) -> AuthSettings:
        for name in ("password", "token"):
            secret = getattr(self, name)
            if secret is not None and len(secret.get_secret_value()) < 8:
                raise ValueError(f"auth.{name} must be at least 8 characters")
        if self.password is None and self.token is None:
            raise ValueError("set auth.password (LINEWATCH_AUTH__PASSWORD) or auth.token "
                             "(LINEWATCH_AUTH__TOKEN): the console has no open mode")
        return self


class DashboardSettings(ProcessSettings):
    """Operator's console process (``python -m workers.dashboard``)."""

    redis: RedisSettings
    auth: AuthSettings
    http: HttpSettings = HttpSettings(port=8080)
    allowed_hosts: list[str] = Field(
        default=["127.0.0.1", "localhost"],
        description='Host header values served, as JSON (["console.example.com"]); others '
                    "get 400 (DNS rebinding). /healthz and /readyz answer any host.")
    refresh_ms: int = Field(default=5000, ge=200, description="How often the page polls.")
    chart_points: int = Field(
        default=600, ge=10, le=5000, description="Results per line in the score chart.")
    offline_after_s: float = Field(
        default=120.0, gt=0, description="A camera without a result for this long is offline.")
    anomaly_window_s: int = Field(
        default=300, ge=60, le=3600,
        description="A camera with anomalous frames this recently is in state 'anomalies'.")
    max_alerts: int = Field(default=200, ge=10, le=2000, description="Alerts listed per line.")
