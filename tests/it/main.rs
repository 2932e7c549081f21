//! The one integration test binary (one link step for all suites).

mod adversarial;
mod auth;
mod bad_records;
mod binary;
mod bounds;
mod cli;
mod completeness;
mod config;
mod daemon;
mod database;
mod deletions;
mod deploy;
mod fake_api;
mod fake_oauth;
mod helpers;
mod init;
mod pagination;
mod process;
mod real_servers;
mod request_shapes;
mod resilience;
mod secrets;
mod store;
mod sync;
