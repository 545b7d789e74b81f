-- Every replica caches sealed rows; a change to a row must reach them all. This trigger sends
-- the changed grant on the channel `token_store_grants` from inside the writing transaction,
-- so the notification is delivered if and only if the write commits, and no write path (nor an
-- operator's own SQL) can forget it. Only the keeper's claims, which change nothing but
-- `keeper_claimed_until`, send nothing.
create function token_store_notify_grant_change() returns trigger
language plpgsql as $$
declare
    changed integration_tokens;
begin
    if tg_op = 'DELETE' then
        changed := old;
    else
        changed := new;
    end if;
    perform pg_notify(
        'token_store_grants',
        json_build_object('user', changed.user_id, 'provider', changed.provider)::text
    );
    return null;
end
$$;

create trigger integration_tokens_notify_insert_delete
    after insert or delete on integration_tokens
    for each row execute function token_store_notify_grant_change();

create trigger integration_tokens_notify_update
    after update on integration_tokens
    for each row when (
        (to_jsonb(old) - 'keeper_claimed_until') is distinct from (to_jsonb(new) - 'keeper_claimed_until')
    )
    execute function token_store_notify_grant_change();
