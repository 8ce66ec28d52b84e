"""What SMS and voice share: both are Twilio webhooks, answered in TwiML.

- Signature (https://www.twilio.com/docs/usage/webhooks/webhooks-security,
  "Validating signatures from Twilio"): `X-Twilio-Signature` is the base64
  HMAC-SHA1, keyed by the account's auth token, of the full URL Twilio
  requested (query string included, as configured) followed by every POST
  parameter sorted by name, each name and value appended with no
  separator. Values are the decoded ones (`+14155550100`, not `%2B...`).
  Repeated names are sorted by value as well (Twilio's SDKs,
  https://github.com/twilio/twilio-python/blob/main/twilio/request_validator.py).
- JSON bodies: Twilio appends `bodySHA256=<hex SHA-256 of the raw body>`
  to the URL and signs the URL alone; the hash is checked against the body
  (same page). Which variant applies is told by the URL: `bodySHA256` in
  its query string.
- Ports: Twilio may sign the URL with or without the scheme's default
  port (`:443`, `:80`) whichever way it was configured; its SDKs try both
  (`add_port`/`remove_port` in the SDK above). A non-default port is part
  of the URL and kept.
- The URL checked: the connection's configured `webhook_url` (scheme,
  host, port and path: the public address Twilio was given, which the
  service cannot see behind proxies) with the query string the request
  really had (`x-envoy-original-path`, set by Envoy, which overwrites a
  caller's copy). That way `bodySHA256`, our voice turn numbers and the
  parameters of the configured URL reach the check. The request's path is
  not taken: a direct gRPC caller chooses that header, and with another
  tenant's path a call Twilio signed for that tenant would verify here
  when both share a Twilio account (one auth token). Without the header
  the configured URL is used as is. A connection without a `webhook_url`
  never verifies: the URL is half of what is signed.
- Failures are PERMISSION_DENIED (HTTP 403: what Twilio's own middleware
  answers an invalid signature, twilio-node's `webhook()`), nothing stored.
- TwiML (https://www.twilio.com/docs/messaging/twiml,
  https://www.twilio.com/docs/voice/twiml): `text/xml` documents; an empty
  `<Response/>` tells Twilio there is nothing to do now (SMS replies go
  through the REST API afterwards). `say` and `gather` build the voice verbs,
  XML-escaped, with the characters XML 1.0 cannot carry removed.

Pure functions and one stateless checker: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

from chat_service.domain.errors import InvalidArgument, PermissionDenied
from chat_service.domain.webhooks import WebhookCall
from chat_service.ports import OpenedConnection

SIGNATURE_HEADER = "x-twilio-signature"  # gRPC metadata keys are lower case
AUTH_TOKEN = "auth_token"  # noqa: S105 (the name of the connection's field)
BODY_HASH_PARAMETER = "bodySHA256"
WEBHOOK_SIGNATURE_INVALID = "WEBHOOK_SIGNATURE_INVALID"
WEBHOOK_PAYLOAD_INVALID = "WEBHOOK_PAYLOAD_INVALID"

TWIML_CONTENT_TYPE = "text/xml"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'

# An inbound SMS has some 20 parameters plus two per media (at most 10,
# https://www.twilio.com/docs/messaging/guides/webhook-request); a voice
# callback about 30. Far more is not Twilio.
MAX_FORM_FIELDS = 200
_DEFAULT_PORTS = {"https": 443, "http": 80}
# A base64 SHA-1 digest is 28 characters; anything much longer is junk.
_MAX_SIGNATURE_LENGTH = 64
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_NO_MATCH = "the X-Twilio-Signature signature does not match the URL and body"
# Characters XML 1.0 cannot carry, even escaped (https://www.w3.org/TR/xml/#charsets).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

FormParams = tuple[tuple[str, str], ...]


# --------------------------------------------------------------- signature


def compute_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """Twilio's X-Twilio-Signature of a call to `url` with form `params`."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def body_sha256(body: bytes) -> str:
    """The `bodySHA256` Twilio appends to the URL of a JSON body."""
    return hashlib.sha256(body).hexdigest()


def url_with_body_hash(url: str, body: bytes) -> str:
    """`url` as Twilio requests it for a JSON `body` (for tests and emulators)."""
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}{BODY_HASH_PARAMETER}={body_sha256(body)}"


def sign(
    url: str, auth_token: str, params: Mapping[str, str] | Iterable[tuple[str, str]] = ()
) -> str:
    """The X-Twilio-Signature Twilio would send for form `params` posted to
    `url` (for tests and emulators; for a JSON body sign
    `url_with_body_hash(url, body)` with no params)."""
    pairs = params.items() if isinstance(params, Mapping) else params
    return compute_signature(url, pairs, auth_token)


def url_variants(url: str) -> tuple[str, ...]:
    """`url` as given, and with the scheme's default port added or removed
    (Twilio signs either). Other ports are kept as they are."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number
        return (url,)
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    host = parts.hostname or ""
    if default is None or not host:
        return (url,)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if port is None:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
    elif port == default:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    else:
        return (url,)
    return (url, other)


def signed_url(webhook_url: str, original_path: str) -> str:
    """The URL whose signature is checked: the configured URL up to its
    path, with the request's own query string (see the module doc); the
    configured URL itself when the request's path is unknown. "" without a
    `webhook_url` (nothing can verify)."""
    if not webhook_url:
        return ""
    if not original_path.startswith("/") or original_path.startswith("//"):
        return webhook_url
    parts = urlsplit(webhook_url)
    _, mark, query = original_path.partition("?")
    return f"{parts.scheme}://{parts.netloc}{parts.path}{mark}{query}"


def verify_signature(url: str, body: bytes, header: str | None, auth_token: str) -> None:
    """Raise PermissionDenied unless `header` is Twilio's signature of a call
    to `url` (or its default-port variant) with `body`: form parameters, or
    a body whose hash the URL's `bodySHA256` names."""
    if not auth_token:
        # An empty key is one anybody can sign with: a misconfigured
        # connection must not accept every body.
        raise _bad_signature("no auth token is configured for this connection")
    if not url:
        raise _bad_signature("the connection has no webhook_url, which Twilio's signature covers")
    given = _signature_bytes(header)
    params = _signed_params(url, body)
    matched = False
    for variant in url_variants(url):
        expected = base64.b64decode(compute_signature(variant, params, auth_token))
        # Every variant is computed: the time taken does not tell which matched.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise _bad_signature(_NO_MATCH)


def _signature_bytes(header: str | None) -> bytes:
    if header is None or not header.strip():
        raise _bad_signature("the X-Twilio-Signature header is missing")
    value = header.strip()
    if len(value) > _MAX_SIGNATURE_LENGTH:
        raise _bad_signature("the X-Twilio-Signature header is not a base64 HMAC-SHA1")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_signature("the X-Twilio-Signature header is not base64") from None


def _signed_params(url: str, body: bytes) -> FormParams:
    """What is signed besides the URL: nothing for a body named by
    `bodySHA256` (checked here), else the body's form parameters."""
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    hashes = [value for name, value in query if name == BODY_HASH_PARAMETER]
    if hashes:
        if len(hashes) != 1 or _HEX_SHA256.fullmatch(hashes[0]) is None:
            raise _bad_signature("bodySHA256 must be given once, as 64 hex digits")
        if not hmac.compare_digest(body_sha256(body), hashes[0].lower()):
            raise _bad_signature("the body does not match the URL's bodySHA256")
        return ()
    try:
        return parse_form(body)
    except InvalidArgument:
        # Twilio signs forms it sent: a body that is none was not signed.
        raise _bad_signature("the body is not a form Twilio signed") from None


def _bad_signature(message: str) -> PermissionDenied:
    return PermissionDenied(message, reason=WEBHOOK_SIGNATURE_INVALID)


class TwilioSignatures:
    """The verification half of a Twilio InboundChannel (SMS, voice): the
    candidates whose auth token signs the call for the URL each was given.

    Every candidate is tried (one HMAC per URL variant each), and a tenant
    with no connection costs one check as well, against a secret nobody
    knows, so the answer does not tell whether the tenant exists.
    """

    def __init__(self) -> None:
        self._decoy_token = secrets.token_hex(32)

    def verify(
        self, call: WebhookCall, candidates: Sequence[OpenedConnection]
    ) -> list[OpenedConnection]:
        header = call.headers.get(SIGNATURE_HEADER)
        decoy_url = signed_url("https://decoy.invalid/", call.original_path)
        # The decoy's refusal is the answer when nothing verifies: the
        # missing or malformed header, the body hash, else "does not match".
        try:
            verify_signature(decoy_url, call.body, header, self._decoy_token)
            refusal = _bad_signature(_NO_MATCH)
        except PermissionDenied as error:
            refusal = error
        verified = [
            candidate
            for candidate in candidates
            if _signs(call, header, candidate.connection.webhook_url, candidate)
        ]
        if not verified:
            raise refusal
        return verified


def _signs(
    call: WebhookCall, header: str | None, webhook_url: str, candidate: OpenedConnection
) -> bool:
    url = signed_url(webhook_url, call.original_path)
    try:
        verify_signature(url, call.body, header, candidate.secrets.get(AUTH_TOKEN, ""))
    except PermissionDenied:
        return False
    return True


# -------------------------------------------------------------------- forms


def parse_form(raw_body: bytes, path: str = "body") -> FormParams:
    """An `application/x-www-form-urlencoded` body as (name, value) pairs in
    order, blanks kept (Twilio signs `Body=` too); bad encoding, UTF-8 or
    too many fields are INVALID_ARGUMENT naming `path`."""
    try:
        text = raw_body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument.of(
            path, "is not a URL-encoded UTF-8 form", reason=WEBHOOK_PAYLOAD_INVALID
        ) from None
    return tuple(pairs)


def form_fields(pairs: FormParams, path: str = "body") -> dict[str, str]:
    """The pairs by name; a name given twice is INVALID_ARGUMENT (Twilio
    sends each parameter once)."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise InvalidArgument.of(
                f"{path}.{name}"[:200], "is given more than once", reason=WEBHOOK_PAYLOAD_INVALID
            )
        fields[name] = value
    return fields


# -------------------------------------------------------------------- TwiML


def xml_text(text: str) -> str:
    """`text` as XML character data: escaped, without the characters XML
    1.0 cannot carry."""
    return escape(_NOT_XML.sub("", text))


def xml_attribute(value: str) -> str:
    """`value` as a quoted XML attribute value."""
    return quoteattr(_NOT_XML.sub("", value))


def twiml(*verbs: str) -> bytes:
    """A TwiML document of `verbs` (built by the helpers below): `<Response/>`
    when there are none."""
    if not verbs:
        return EMPTY_TWIML
    document = '<?xml version="1.0" encoding="UTF-8"?><Response>' + "".join(verbs) + "</Response>"
    return document.encode()


def say(text: str, *, voice: str = "", language: str = "") -> str:
    """`<Say>` (https://www.twilio.com/docs/voice/twiml/say)."""
    return f"<Say{_attributes(voice=voice, language=language)}>{xml_text(text)}</Say>"


def gather(
    *nested: str,
    action: str,
    input_type: str = "speech",  # TwiML's `input`: "speech", "dtmf" or "dtmf speech"
    method: str = "POST",
    timeout: int | None = None,
    speech_timeout: str = "auto",
    language: str = "",
    action_on_empty_result: bool = False,
) -> str:
    """`<Gather>` (https://www.twilio.com/docs/voice/twiml/gather) posting
    what was heard to `action`, with `nested` verbs (`say`) inside."""
    attributes = _attributes(
        input=input_type,
        action=action,
        method=method,
        timeout=str(timeout) if timeout is not None else "",
        speechTimeout=speech_timeout,
        language=language,
        actionOnEmptyResult="true" if action_on_empty_result else "",
    )
    return f"<Gather{attributes}>{''.join(nested)}</Gather>"


def redirect(url: str, *, method: str = "POST") -> str:
    """`<Redirect>` (https://www.twilio.com/docs/voice/twiml/redirect)."""
    return f"<Redirect{_attributes(method=method)}>{xml_text(url)}</Redirect>"


def hangup() -> str:
    """`<Hangup/>` (https://www.twilio.com/docs/voice/twiml/hangup)."""
    return "<Hangup/>"


def _attributes(**values: str) -> str:
    """Non-empty attributes, in the order given."""
    return "".join(f" {name}={xml_attribute(value)}" for name, value in values.items() if value)
