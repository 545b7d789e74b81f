-- The grant lifecycle: when the keeper refreshes each grant, and an outbox of the events
-- every change of a grant's state writes in the same transaction as the change.

-- When the keeper refreshes the grant next (ahead of its access token's expiry, or to keep
-- an idle refresh token alive, whichever comes first; after a transient failure, when its
-- cool-down ends). Null: the keeper leaves it alone (dead, or no refresh token).
alter table integration_tokens add column next_refresh_at timestamptz;
-- A replica's claim on a due grant: no other keeper takes it before this time.
alter table integration_tokens add column keeper_claimed_until timestamptz;

update integration_tokens
   set next_refresh_at = expires_at - interval '10 minutes'
 where status = 'active' and refresh_token_ct is not null;

-- The keeper's one question, "which grants are due?", is a range scan of this index.
create index integration_tokens_next_refresh_at
    on integration_tokens (next_refresh_at)
 where next_refresh_at is not null;

-- The outbox: one row per change of a grant's state, written by the transaction that made
-- the change, so an event exists if and only if its change committed. Events carry no token.
create table grant_events (
    id          bigint generated always as identity primary key,
    -- The webhook-id: the same for every delivery attempt, so receivers can deduplicate.
    event_id    text        not null unique,
    user_id     text        not null,
    provider    text        not null,
    type        text        not null check (type in (
                    'grant.connected', 'grant.degraded', 'grant.reauthorization_required',
                    'grant.recovered', 'grant.revoked')),
    -- The webhook body as sent: {"type", "timestamp", "data"}.
    payload     jsonb       not null,
    created_at  timestamptz not null default now()
);
-- Deliveries keep each grant's events in order.
create index grant_events_grant on grant_events (user_id, provider, id);

-- One row per event and configured webhook endpoint: kept until delivered, or until it
-- failed `max_attempts` times.
create table webhook_deliveries (
    event_id        bigint      not null references grant_events (id) on delete cascade,
    endpoint        text        not null,
    state           text        not null default 'pending'
                    check (state in ('pending', 'delivered', 'failed')),
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    -- A replica's claim while it sends: no other replica sends it before this time.
    claimed_until   timestamptz,
    last_error      text,
    delivered_at    timestamptz,
    primary key (event_id, endpoint)
);
create index webhook_deliveries_due
    on webhook_deliveries (next_attempt_at)
 where state = 'pending';

grant select, insert, update, delete on grant_events, webhook_deliveries to token_store_app;
