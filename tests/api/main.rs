//! Integration tests: the service against a real PostgreSQL and a real LocalStack KMS.

mod audit;
mod auth;
mod bad_input;
mod binary;
mod cache;
mod connections;
mod contract;
mod credentials;
mod encryption;
mod faults;
mod health;
mod keeper;
mod kms_outage;
mod lifecycle;
mod lookups;
mod provider_faults;
mod proxy;
mod races;
mod refresh;
mod revoke;
mod rewrap;
mod row_cache;
mod secrets;
mod strict;
mod tokens;
