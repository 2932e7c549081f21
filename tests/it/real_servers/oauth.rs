//! django-oauth-toolkit (a real OAuth2 authorization server, in the DRF
//! project) issues the tokens: `/o/token/` for the client credentials and
//! refresh token grants, the tickets behind it at `/secure/tickets/`. The
//! clients and the user are the ones `manage.py seed_oauth` created.

use std::collections::HashMap;

use sqlx::sqlite::SqlitePoolOptions;

use super::servers::{self, RealServer};
use super::{assert_succeeded, assert_table_is_source};
use crate::binary::{run as apisync, scratch, stderr};
use crate::helpers::{JobToml, TestEnv};

const SERVICE: (&str, &str) = ("apisync-service", "service-secret-0815");
const USER_CLIENT: (&str, &str) = ("apisync-user", "user-secret-4242");
const USER: (&str, &str) = ("archivist", "archivist-password-4711");

/// The secure tickets, 100 a page, walked by DRF's `next` links, behind `auth`.
fn secure(auth: &str) -> JobToml {
    JobToml::lines(&format!(
        "records = \"/results\"\n[jobs.request]\nurl = \"{{api}}/secure/tickets/\"\n\
         [jobs.pagination]\nkind = \"next_url\"\n[jobs.auth]\n{auth}"
    ))
}

fn client_credentials(secret_var: &str) -> String {
    format!(
        "kind = \"oauth2_client_credentials\"\ntoken_url = \"{{api}}/o/token/\"\n\
         client_id = \"{}\"\nclient_secret = \"${{{secret_var}}}\"\nscope = \"read\"\n",
        SERVICE.0
    )
}

/// How many rows `table` of the server's own SQLite file holds.
async fn server_rows(server: &RealServer, sql: &str) -> i64 {
    let url = format!("sqlite://{}?mode=ro", server.data_file().display());
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("open the DRF database");
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

#[sqlx::test(migrations = false)]
async fn client_credentials_from_django_oauth_toolkit_outlive_their_tokens(pool: sqlx::PgPool) {
    // Arrange: 3-second tokens, and 51 pages at 10 requests a second: the
    // run takes five seconds, longer than a token lives.
    let server = servers::drf_with_token_lifetime(3).await;
    let env = TestEnv::start(pool, Vec::new()).await;
    let job = secure(&client_credentials("SERVICE_SECRET"))
        .with("rate_limit", "10/s")
        .api(&server.url);
    let secrets: HashMap<String, String> = [("SERVICE_SECRET".into(), SERVICE.1.into())].into();
    let (job, _) = env.job_with_env(job, &secrets);

    // Act
    let report = env.run(&job).await;

    // Assert: exact, and the server issued more than one token.
    assert_succeeded(&report);
    assert_table_is_source(&env, &server).await;
    let issued = server_rows(&server, "SELECT count(*) FROM oauth2_provider_accesstoken").await;
    assert!(issued >= 2, "tokens issued: {issued}\n{}", server.log());
}

#[sqlx::test(migrations = false)]
async fn django_oauth_toolkit_refusing_a_wrong_secret_fails_the_run_with_reason_auth(
    pool: sqlx::PgPool,
) {
    let server = servers::shared_drf().await;
    let env = TestEnv::start(pool, Vec::new()).await;
    let job = secure(&client_credentials("SERVICE_SECRET")).api(&server.url);
    let secrets: HashMap<String, String> =
        [("SERVICE_SECRET".into(), "not-the-secret-1234".into())].into();
    let (job, _) = env.job_with_env(job, &secrets);

    let report = env.run(&job).await;

    assert_eq!(report.failure.map(|f| f.as_str()), Some("auth"));
    let error = report.error.unwrap();
    assert!(error.contains("invalid_client"), "{error}");
    assert!(!error.contains("not-the-secret"), "{error}");
    assert_eq!(env.rows(super::TABLE).await.len(), 0);
}

#[sqlx::test(migrations = false)]
async fn refresh_tokens_rotated_by_django_oauth_toolkit_are_kept_across_processes(
    pool: sqlx::PgPool,
) {
    // Arrange: the user's first refresh token from the password grant;
    // the server rotates it on every use and refuses a used one.
    let server = servers::drf().await;
    let env = TestEnv::start(pool, Vec::new()).await;
    let (status, grant) = server
        .post_form(
            "/o/token/",
            USER_CLIENT,
            &[
                ("grant_type", "password"),
                ("username", USER.0),
                ("password", USER.1),
                ("scope", "read"),
            ],
        )
        .await;
    assert!(status.is_success(), "{grant}\n{}", server.log());
    let seed = grant["refresh_token"].as_str().expect("a refresh token");
    let auth = format!(
        "kind = \"oauth2_refresh_token\"\ntoken_url = \"{{api}}/o/token/\"\n\
         client_id = \"{}\"\nclient_secret = \"${{USER_SECRET}}\"\n\
         refresh_token = \"${{SEED}}\"\n",
        USER_CLIENT.0
    );
    let dir = scratch("drf-refresh-rotation");
    let job = secure(&auth).api(&server.url);
    std::fs::write(dir.join("apisync.toml"), env.config_file(job)).unwrap();
    let vars = [("USER_SECRET", USER_CLIENT.1), ("SEED", seed)];

    // Act: two processes, each refreshing once.
    let first = apisync(&dir, &["sync", "products"], &vars).await;
    let second = apisync(&dir, &["sync", "products"], &vars).await;

    // Assert: both succeed (the second could only with the token the first
    // received and kept), the table is the source, and the server holds
    // three refresh tokens, two of them revoked.
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_table_is_source(&env, &server).await;
    let tokens = server_rows(&server, "SELECT count(*) FROM oauth2_provider_refreshtoken").await;
    let revoked = server_rows(
        &server,
        "SELECT count(*) FROM oauth2_provider_refreshtoken WHERE revoked IS NOT NULL",
    )
    .await;
    assert_eq!((tokens, revoked), (3, 2), "{}", server.log());
}
