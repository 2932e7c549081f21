//! `apisync init` against the real servers: what it guesses from their
//! first pages archives each source exactly.

use super::servers::{self, RealServer};
use super::{assert_succeeded, assert_table_is_source};
use crate::helpers::TestEnv;
use crate::init::guessed;

/// Guesses a job for `path` of `server`, runs it, and holds the table to
/// the source; the TOML, for the caller's own checks.
async fn archives_exactly(server: &RealServer, path: &str, pool: sqlx::PgPool) -> String {
    let env = TestEnv::start(pool, Vec::new()).await;
    // The harness compares table `products` with the source.
    let (toml, job) = guessed(&format!("{}{path}", server.url), super::TABLE).await;
    let slug: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = crate::binary::scratch(&format!("init-real{slug}"));
    std::fs::write(
        dir.join("apisync.toml"),
        format!("[database]\nurl = \"{}\"\n{toml}", env.database_url),
    )
    .unwrap();
    let check = crate::binary::run(&dir, &["check", "--connect"], &[]).await;
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}\n{toml}",
        crate::binary::stdout(&check)
    );
    let report = env.run(&job).await;
    assert_succeeded(&report);
    assert_table_is_source(&env, server).await;
    toml
}

#[sqlx::test(migrations = false)]
async fn init_on_drf_follows_its_next_links(pool: sqlx::PgPool) {
    let server = servers::shared_drf().await;
    let toml = archives_exactly(server, "/pages/tickets/", pool).await;
    assert!(toml.contains("kind = \"next_url\""), "{toml}");
    assert!(toml.contains("total_path = \"/count\""), "{toml}");
}

#[sqlx::test(migrations = false)]
async fn init_on_fastapi_pagination_walks_its_pages(pool: sqlx::PgPool) {
    let server = servers::shared_fastapi().await;
    let toml = archives_exactly(server, "/pages/orders", pool).await;
    assert!(toml.contains("kind = \"page\""), "{toml}");
}

#[sqlx::test(migrations = false)]
async fn init_on_datasette_follows_next_url(pool: sqlx::PgPool) {
    let server = servers::shared_datasette().await;
    let toml = archives_exactly(server, "/tickets/tickets_ticket.json?_shape=objects", pool).await;
    assert!(toml.contains("records = \"/rows\""), "{toml}");
}

#[sqlx::test(migrations = false)]
async fn init_on_json_server_reads_the_one_array(pool: sqlx::PgPool) {
    let server = servers::shared_json_server_0_17().await;
    let toml = archives_exactly(server, "/tickets", pool).await;
    assert!(toml.contains("records = \"\""), "{toml}");
}
