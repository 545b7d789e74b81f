//! Integration tests: the service against a real PostgreSQL and a real LocalStack KMS.

mod audit;
mod auth;
mod bad_input;
mod bench;
mod binary;
mod cache;
mod encryption;
mod helpers;
mod kms_outage;
mod lookups;
mod provider;
mod proxy;
mod refresh;
mod rewrap;
mod secrets;
mod tokens;
