from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthorizeRequest(_message.Message):
    __slots__ = ("principal", "groups", "identity", "action", "bucket", "key", "prefix", "kind", "method", "client_ip", "time", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    principal: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    identity: Identity
    action: str
    bucket: str
    key: str
    prefix: str
    kind: str
    method: str
    client_ip: str
    time: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, principal: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ..., action: _Optional[str] = ..., bucket: _Optional[str] = ..., key: _Optional[str] = ..., prefix: _Optional[str] = ..., kind: _Optional[str] = ..., method: _Optional[str] = ..., client_ip: _Optional[str] = ..., time: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("source", "claims")
    class ClaimsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    source: str
    claims: _containers.ScalarMap[str, str]
    def __init__(self, source: _Optional[str] = ..., claims: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("allow", "deny", "reason", "ttl_s", "scope_prefix")
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    SCOPE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    allow: bool
    deny: bool
    reason: str
    ttl_s: int
    scope_prefix: str
    def __init__(self, allow: _Optional[bool] = ..., deny: _Optional[bool] = ..., reason: _Optional[str] = ..., ttl_s: _Optional[int] = ..., scope_prefix: _Optional[str] = ...) -> None: ...

class LookupSecretRequest(_message.Message):
    __slots__ = ("access_key",)
    ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    access_key: str
    def __init__(self, access_key: _Optional[str] = ...) -> None: ...

class LookupSecretResponse(_message.Message):
    __slots__ = ("found", "secret", "principal", "groups")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    secret: str
    principal: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, found: _Optional[bool] = ..., secret: _Optional[str] = ..., principal: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ...) -> None: ...

class BucketCredentialsRequest(_message.Message):
    __slots__ = ("principal", "groups", "bucket", "backend")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    principal: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    bucket: str
    backend: str
    def __init__(self, principal: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., bucket: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class BucketCredentialsResponse(_message.Message):
    __slots__ = ("found", "access_key", "secret_key", "session_token", "per_principal", "expires_unix")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PER_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    found: bool
    access_key: str
    secret_key: str
    session_token: str
    per_principal: bool
    expires_unix: int
    def __init__(self, found: _Optional[bool] = ..., access_key: _Optional[str] = ..., secret_key: _Optional[str] = ..., session_token: _Optional[str] = ..., per_principal: _Optional[bool] = ..., expires_unix: _Optional[int] = ...) -> None: ...
