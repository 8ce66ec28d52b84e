"""Channel connections: a tenant's account on one messaging platform.

Pure rules, no I/O: which fields each platform takes and which of them are
secrets, which one is the account id a webhook names, what a valid
connection looks like, and what an update may change. Secrets travel in
`ConnectionFields.secrets` as plain text only between the gRPC layer and
the use case (pipeline/connections.py), which seals them (SecretBox) before
anything is stored; a `ChannelConnection` holds them sealed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from chat_service.domain.enums import Channel
from chat_service.domain.errors import FieldViolation, InvalidArgument
from chat_service.domain.identifiers import has_control

MAX_DISPLAY_NAME_LENGTH = 255
MAX_WEBHOOK_URL_LENGTH = 2048
MAX_FIELD_LENGTH = 1024  # an access token is a few hundred characters

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_DIGITS = re.compile(r"[0-9]{1,32}")
_SLACK_TEAM = re.compile(r"T[A-Z0-9]{2,31}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TWILIO_SID = re.compile(r"AC[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class PlatformSpec:
    """One platform's connection fields, as named in the contract."""

    name: str  # the oneof field and the webhook path segment: "whatsapp"
    account_field: str  # the field whose value picks the connection
    public: tuple[tuple[str, re.Pattern[str] | None, str], ...]  # (field, shape, shape told)
    secrets: tuple[str, ...]
    handshake_field: str = ""  # Meta: the secret VerifyWebhook compares
    # The platform signs the webhook URL (Twilio): webhook_url is required.
    signs_webhook_url: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.public) + self.secrets


_TWILIO_PUBLIC = (
    ("account_sid", _TWILIO_SID, '"AC" and 32 lowercase hex digits'),
    ("phone_number", E164, "an E.164 number like +14155550100"),
)

PLATFORMS: Mapping[Channel, PlatformSpec] = {
    Channel.WHATSAPP: PlatformSpec(
        name="whatsapp",
        account_field="phone_number_id",
        public=(("phone_number_id", _DIGITS, "digits"),),
        secrets=("app_secret", "verify_token", "access_token"),
        handshake_field="verify_token",
    ),
    Channel.MESSENGER: PlatformSpec(
        name="messenger",
        account_field="page_id",
        public=(("page_id", _DIGITS, "digits"),),
        secrets=("app_secret", "verify_token", "page_access_token"),
        handshake_field="verify_token",
    ),
    Channel.SLACK: PlatformSpec(
        name="slack",
        account_field="team_id",
        public=(("team_id", _SLACK_TEAM, 'a workspace id like "T0123ABCD"'),),
        secrets=("signing_secret", "bot_token"),
    ),
    Channel.TEAMS: PlatformSpec(
        name="teams",
        account_field="app_id",
        public=(("app_id", _GUID, "a GUID"),),
        secrets=("app_password",),
    ),
    Channel.SMS: PlatformSpec(
        name="sms",
        account_field="phone_number",
        public=_TWILIO_PUBLIC,
        secrets=("auth_token",),
        signs_webhook_url=True,
    ),
    Channel.VOICE: PlatformSpec(
        name="voice",
        account_field="phone_number",
        public=_TWILIO_PUBLIC,
        secrets=("auth_token",),
        signs_webhook_url=True,
    ),
}

PLATFORM_BY_NAME: Mapping[str, Channel] = {
    spec.name: channel for channel, spec in PLATFORMS.items()
}


def platform_of(name: str) -> Channel | None:
    """The channel of a webhook path's platform segment ("whatsapp"), or None."""
    return PLATFORM_BY_NAME.get(name)


def webhook_path(tenant_id: str, channel: Channel) -> str:
    return f"/v1/webhooks/{tenant_id}/{PLATFORMS[channel].name}"


@dataclass(frozen=True, slots=True)
class ConnectionFields:
    """What a caller gives for a connection (create) or for a change (update):
    the platform's public fields and its secrets in plain text."""

    channel: Channel
    display_name: str = ""
    webhook_url: str = ""
    public: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)  # plain text


@dataclass(frozen=True, slots=True)
class ChannelConnection:
    """A stored connection. `secrets` are sealed (SecretBox, context
    `secret_context(...)`); `fingerprints` tell them apart without opening."""

    connection_id: str
    tenant_id: str
    channel: Channel
    account_id: str
    display_name: str
    webhook_url: str
    public: Mapping[str, str]
    secrets: Mapping[str, str]
    fingerprints: Mapping[str, str]
    created_at: datetime
    updated_at: datetime
    version: int = 1
    # Create's idempotency key and the fingerprint of what it asked for.
    request_id: str = ""
    request_fingerprint: str = ""

    @property
    def spec(self) -> PlatformSpec:
        return PLATFORMS[self.channel]

    def changed(
        self,
        fields: ConnectionFields,
        paths: tuple[str, ...],
        *,
        sealed: Mapping[str, str],
        fingerprints: Mapping[str, str],
        at: datetime,
    ) -> ChannelConnection:
        """This connection with the `paths` of `fields` applied (checked by
        `check_update`); the secrets among them come sealed in `sealed`."""
        public = dict(self.public)
        for path in paths:
            name = path.partition(".")[2]
            if name in fields.public:
                public[name] = fields.public[name]
        return replace(
            self,
            display_name=fields.display_name if "display_name" in paths else self.display_name,
            webhook_url=fields.webhook_url if "webhook_url" in paths else self.webhook_url,
            public=public,
            account_id=account_id_of(self.channel, public),
            secrets={**self.secrets, **sealed},
            fingerprints={**self.fingerprints, **fingerprints},
            updated_at=at,
            version=self.version + 1,
        )


def account_id_of(channel: Channel, public: Mapping[str, str]) -> str:
    """The id a webhook names the connection by. A Teams app id is a GUID,
    which Microsoft writes in either case: kept lowercase, as activities are
    matched after lowering theirs."""
    value = public[PLATFORMS[channel].account_field]
    return value.lower() if channel is Channel.TEAMS else value


def secret_context(tenant_id: str, connection_id: str, name: str) -> str:
    """The AAD a secret is sealed with: a sealed value copied to another
    connection, tenant or field does not open."""
    return f"channel-connection/{tenant_id}/{connection_id}/{name}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin change: who, what, when. Never a secret's value (the
    fingerprints of changed secrets say that they changed)."""

    tenant_id: str
    connection_id: str
    action: str  # "create", "update", "delete"
    actor: str  # the token's subject
    at: datetime
    changed_fields: tuple[str, ...] = ()
    detail: Mapping[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ checks


def check_new(fields: ConnectionFields, prefix: str = "connection") -> None:
    """A create's fields: every platform field present and well-formed."""
    spec = PLATFORMS.get(fields.channel)
    if spec is None:
        raise InvalidArgument.of(
            prefix, "set one of " + ", ".join(s.name for s in PLATFORMS.values())
        )
    violations = _common_violations(fields, prefix)
    if spec.signs_webhook_url and not fields.webhook_url:
        # Twilio signs the exact URL it calls: without it no call verifies.
        violations.append(
            FieldViolation(f"{prefix}.webhook_url", f"is required for {spec.name} connections")
        )
    for name in spec.fields:
        value = fields.public.get(name, fields.secrets.get(name, ""))
        violation = _field_violation(spec, name, value, f"{prefix}.{spec.name}.{name}")
        if violation is not None:
            violations.append(violation)
    if violations:
        raise InvalidArgument(violations)


def check_update(
    connection: ChannelConnection,
    fields: ConnectionFields,
    paths: tuple[str, ...],
    prefix: str = "connection",
) -> None:
    """An update's fields, for the mask's `paths` (already resolved: never
    empty). Raises InvalidArgument naming each bad path or value."""
    spec = connection.spec
    violations: list[FieldViolation] = []
    if fields.channel is not connection.channel:
        violations.append(
            FieldViolation(
                f"{prefix}.{PLATFORMS[fields.channel].name}"
                if fields.channel in PLATFORMS
                else prefix,
                f"the connection is a {spec.name} connection; its platform cannot change",
            )
        )
    violations.extend(_common_violations(fields, prefix))
    for path in paths:
        if path == "webhook_url" and spec.signs_webhook_url and not fields.webhook_url:
            # As when the connection is made: Twilio signs the exact URL.
            violations.append(
                FieldViolation(f"{prefix}.webhook_url", f"is required for {spec.name} connections")
            )
        if path in ("display_name", "webhook_url"):
            continue
        platform, _, name = path.partition(".")
        if platform != spec.name or name not in spec.fields:
            violations.append(
                FieldViolation(
                    "update_mask", f"{path!r} is not a field of this {spec.name} connection"
                )
            )
            continue
        value = fields.public.get(name, fields.secrets.get(name, ""))
        violation = _field_violation(spec, name, value, f"{prefix}.{path}")
        if violation is not None:
            violations.append(violation)
    if violations:
        raise InvalidArgument(violations)


def _common_violations(fields: ConnectionFields, prefix: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if len(fields.display_name) > MAX_DISPLAY_NAME_LENGTH:
        violations.append(
            FieldViolation(
                f"{prefix}.display_name", f"must be at most {MAX_DISPLAY_NAME_LENGTH} characters"
            )
        )
    elif has_control(fields.display_name):
        violations.append(
            FieldViolation(f"{prefix}.display_name", "must not contain control characters")
        )
    url = fields.webhook_url
    if url:
        if len(url) > MAX_WEBHOOK_URL_LENGTH:
            violations.append(
                FieldViolation(
                    f"{prefix}.webhook_url", f"must be at most {MAX_WEBHOOK_URL_LENGTH} characters"
                )
            )
        elif not re.fullmatch(r"https://[^\s/?#]+(/[^\s#]*)?", url) or has_control(url):
            violations.append(
                FieldViolation(f"{prefix}.webhook_url", "must be an absolute https URL")
            )
    return violations


def _field_violation(spec: PlatformSpec, name: str, value: str, path: str) -> FieldViolation | None:
    if not value:
        return FieldViolation(path, "is required")
    if len(value) > MAX_FIELD_LENGTH:
        return FieldViolation(path, f"must be at most {MAX_FIELD_LENGTH} characters")
    if has_control(value) or value != value.strip():
        return FieldViolation(path, "must not contain control characters or surrounding spaces")
    for public_name, shape, told in spec.public:
        if public_name == name and shape is not None and not shape.fullmatch(value):
            return FieldViolation(path, f"must be {told}")
    return None
