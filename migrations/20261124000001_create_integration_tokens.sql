-- One row per (user_id, provider): a third-party OAuth grant, sealed at rest.
-- No column ever holds a plaintext token: the *_ct columns are AES-256-GCM envelopes
-- (version | nonce | ciphertext | tag) under the row's own data key, and the data key is
-- stored only as KMS wrapped it.
create table integration_tokens (
    id                     bigint generated always as identity primary key,
    user_id                text        not null,
    provider               text        not null,

    -- The KMS key (ARN) that wrapped this row's data key; rewrap changes it.
    kms_key_id             text        not null,
    -- The data key as KMS GenerateDataKey returned it, bound to the encryption context
    -- {purpose, user_id, provider}; only KMS can unwrap it.
    wrapped_data_key       bytea       not null,
    -- When the data key was generated: a refresh re-seals under it while it is young.
    data_key_created_at    timestamptz not null,

    access_token_ct        bytea       not null,
    -- Absent for grants that came without a refresh token.
    refresh_token_ct       bytea,

    expires_at             timestamptz not null,
    scopes                 text[]      not null,

    -- 'reauthorization_required' once the provider said the grant is dead; the row is kept
    -- so the caller can tell "consent again" from "never connected".
    status                 text        not null default 'active'
                           check (status in ('active', 'reauthorization_required')),

    -- Incremented by every write: the fencing token of refresh (update ... where version = $read).
    version                bigint      not null default 1,

    -- Refresh bookkeeping.
    last_refresh_at        timestamptz,
    refresh_failure_count  integer     not null default 0,
    last_refresh_error     text,
    -- Cool-down after a transient provider failure: no provider call before this time.
    refresh_retry_after    timestamptz,

    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now(),

    -- The lookup every request makes; also what makes the pair unique.
    constraint integration_tokens_user_provider_key unique (user_id, provider)
);
