-- The service's own database role: it reads and writes grants and nothing else. It owns
-- nothing, runs no DDL and is not the RDS master user (migrations run as the owner).
-- NOLOGIN: the users the service connects as are members of it, e.g. `token_store_service`
-- in AWS, whose password Secrets Manager rotates, or the two users of the alternating-users
-- rotation. Roles belong to the whole cluster: another database of the same cluster may
-- have created it already, perhaps at this very moment.
do $$
begin
    create role token_store_app nologin;
exception
    when duplicate_object or unique_violation then null;
end
$$;

-- Every table a later migration adds must be granted here too.
grant select, insert, update, delete on integration_tokens to token_store_app;
