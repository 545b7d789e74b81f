//! Integration tests: the service against a real PostgreSQL and a real LocalStack KMS.

mod audit;
mod auth;
mod bad_input;
mod bench;
mod binary;
mod cache;
mod connections;
mod contract;
mod credentials;
mod encryption;
mod faults;
mod helpers;
mod kms_outage;
mod lookups;
mod provider;
mod provider_faults;
mod proxy;
mod races;
mod refresh;
mod rewrap;
mod secrets;
mod strict;
mod tokens;
