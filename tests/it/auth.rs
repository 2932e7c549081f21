//! `[jobs.auth]` against a fake OAuth2 server and the API it protects
//! (`fake_oauth`): tokens that expire during a run, a 401 mid-run, a wrong
//! secret, refresh-token rotation across processes on both stores, a login
//! call, an API key in the query, `${file:…}` secrets.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;

use crate::binary::{run as apisync, scratch, stderr, stdout};
use crate::fake_oauth::{
    API_KEY, CLIENT_ID, CLIENT_SECRET, ClientAuth, FakeAuth, PAGE_SIZE, PASSWORD, USERNAME,
};
use crate::helpers::{JobToml, TestEnv, expected_rows, products, store_tests};

/// `/items`, paged, behind `auth` (TOML lines of `[jobs.auth]`).
fn protected(auth: &str) -> JobToml {
    JobToml::lines(&format!(
        "records = \"/data\"\n[jobs.request]\nurl = \"{{api}}/items\"\n\
         [jobs.pagination]\nkind = \"page\"\n[jobs.auth]\n{auth}"
    ))
}

fn client_credentials() -> String {
    format!(
        "kind = \"oauth2_client_credentials\"\ntoken_url = \"{{api}}/oauth/token\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"${{CLIENT_SECRET}}\"\n"
    )
}

fn refresh_token(seed: &str) -> String {
    format!(
        "kind = \"oauth2_refresh_token\"\ntoken_url = \"{{api}}/oauth/token\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"${{CLIENT_SECRET}}\"\n\
         refresh_token = \"{seed}\"\n"
    )
}

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a new process on the test's store would have: no token in memory.
fn new_process(env: &TestEnv) -> apisync::sync::SyncContext {
    let client = apisync::source::ApiClient::new().unwrap();
    client.keep_tokens_in(env.ctx.store.clone());
    apisync::sync::SyncContext {
        client,
        store: env.ctx.store.clone(),
        redactor: env.ctx.redactor.clone(),
        cancel: tokio_util::sync::CancellationToken::new(),
        in_flight: Default::default(),
    }
}

fn secret_env() -> HashMap<String, String> {
    vars(&[("CLIENT_SECRET", CLIENT_SECRET)])
}

#[sqlx::test(migrations = false)]
async fn tokens_that_expire_during_a_run_are_renewed_and_the_run_is_exact(pool: PgPool) {
    // Arrange: 2 s tokens, and a run of 21 requests that each take 150 ms:
    // longer than one token lives.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(200), ClientAuth::Basic, Duration::from_secs(2)).await;
    auth.delay(Duration::from_millis(150));
    let job = protected(&client_credentials()).api(&auth.url(""));
    let (job, _) = env.job_with_env(job, &secret_env());

    // Act
    let report = env.run(&job).await;

    // Assert: exact, with the token renewed ahead of its expiry (no request
    // went out with an expired token), one token request per renewal.
    assert_eq!(report.status.as_str(), "succeeded", "{:?}", report.error);
    assert_eq!(env.rows("products").await, expected_rows(&auth.records()));
    assert!(
        auth.issued().len() >= 2,
        "a 3 s run on 2 s tokens renews: {} token(s)",
        auth.issued().len()
    );
    assert_eq!(auth.token_requests(), auth.issued().len());
    assert_eq!(auth.unauthorized(), 0, "renewed before it expired");
}

#[sqlx::test(migrations = false)]
async fn a_401_mid_run_renews_the_token_once_without_spending_an_attempt(pool: PgPool) {
    // Arrange: the server revokes every token after the third request;
    // one attempt per request, so a 401 counted as a failed attempt would
    // end the run.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(55), ClientAuth::Basic, Duration::from_secs(3600)).await;
    auth.revoke_after(3);
    let job = protected(&client_credentials())
        .with("retry.max_attempts", 1)
        .api(&auth.url(""));
    let (job, _) = env.job_with_env(job, &secret_env());

    // Act
    let report = env.run(&job).await;

    // Assert
    assert_eq!(report.status.as_str(), "succeeded", "{:?}", report.error);
    assert_eq!(env.rows("products").await, expected_rows(&auth.records()));
    assert_eq!(auth.unauthorized(), 1);
    assert_eq!(auth.issued().len(), 2, "one token, then one renewal");
}

#[sqlx::test(migrations = false)]
async fn a_401_that_a_new_token_does_not_cure_fails_the_run_with_reason_auth(pool: PgPool) {
    // Arrange: after the first page, the client loses its access: new
    // tokens are issued but refused.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(55), ClientAuth::Basic, Duration::from_secs(3600)).await;
    auth.deny_after(1);
    let job = protected(&client_credentials()).api(&auth.url(""));
    let (job, _) = env.job_with_env(job, &secret_env());

    // Act
    let report = env.run(&job).await;

    // Assert: page 1 is stored, page 2 got 401 twice (once per token), and
    // the run ended there, with no retries.
    assert_eq!(report.status.as_str(), "failed");
    assert_eq!(report.failure.map(|f| f.as_str()), Some("auth"));
    assert!(
        report.error.as_deref().unwrap().contains("401"),
        "{:?}",
        report.error
    );
    assert_eq!(auth.unauthorized(), 2);
    assert_eq!(auth.issued().len(), 2);
    assert_eq!(env.rows("products").await.len(), PAGE_SIZE);
}

#[sqlx::test(migrations = false)]
async fn a_wrong_client_secret_fails_with_reason_auth_before_any_api_request(pool: PgPool) {
    // Arrange: the real binary, default retries, a secret that is wrong.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(30), ClientAuth::Basic, Duration::from_secs(60)).await;
    let dir = scratch("auth-wrong-secret");
    let job = protected(&client_credentials()).api(&auth.url(""));
    std::fs::write(dir.join("apisync.toml"), env.config_file(job)).unwrap();
    let wrong = "cs-wrong-0000-secret";

    // Act
    let sync = apisync(&dir, &["sync", "products"], &[("CLIENT_SECRET", wrong)]).await;

    // Assert: exit 1, the token endpoint's error named, asked once (a
    // refusal is not retried), the API never asked, the secret nowhere.
    let out = format!("{}{}", stdout(&sync), stderr(&sync));
    assert_eq!(sync.status.code(), Some(1), "{out}");
    assert!(
        out.contains("invalid_client") && out.contains("Client authentication failed"),
        "{out}"
    );
    assert_eq!(auth.token_requests(), 1, "no retry storm");
    assert_eq!(auth.api_requests(), 0);
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM apisync.runs")
            .fetch_one(env.pg())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    let error = error.unwrap();
    assert!(error.contains("invalid_client"), "{error}");
    for text in [&out, &error] {
        assert!(
            !text.contains(wrong) && !text.contains("cs-wrong"),
            "{text}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn client_credentials_in_the_form_with_scope_and_extra_fields(pool: PgPool) {
    // Arrange: a server that wants the client in the form, not as Basic.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(25), ClientAuth::Form, Duration::from_secs(60)).await;
    let lines = format!(
        "{}scope = \"read:items\"\nclient_auth = \"form\"\n\
         params = {{ audience = \"https://api.test\" }}\n",
        client_credentials()
    );
    let job = protected(&lines).api(&auth.url(""));
    let (job, _) = env.job_with_env(job, &secret_env());

    // Act
    let report = env.run(&job).await;

    // Assert
    assert_eq!(report.status.as_str(), "succeeded", "{:?}", report.error);
    assert_eq!(env.rows("products").await, expected_rows(&auth.records()));
    let form = &auth.forms()[0];
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "read:items");
    assert_eq!(form["audience"], "https://api.test");
    assert_eq!(form["client_id"], CLIENT_ID);
}

#[sqlx::test(migrations = false)]
async fn jobs_with_the_same_auth_settings_share_one_token(pool: PgPool) {
    // Arrange: two jobs, same auth, run at the same time.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(40), ClientAuth::Basic, Duration::from_secs(60)).await;
    auth.delay(Duration::from_millis(20));
    let first = protected(&client_credentials()).api(&auth.url(""));
    let second = first.clone().named("copy").with("table", "copy");
    let (first, _) = env.job_with_env(first, &secret_env());
    let (second, _) = env.job_with_env(second, &secret_env());

    // Act
    let (a, b) = tokio::join!(env.run(&first), env.run(&second));

    // Assert
    assert_eq!(a.status.as_str(), "succeeded", "{:?}", a.error);
    assert_eq!(b.status.as_str(), "succeeded", "{:?}", b.error);
    assert_eq!(auth.token_requests(), 1, "one fetch for both jobs");
}

#[sqlx::test(migrations = false)]
async fn a_login_call_gets_the_token_from_its_answer(pool: PgPool) {
    // Arrange
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(33), ClientAuth::Basic, Duration::from_secs(60)).await;
    let lines = format!(
        "kind = \"token_request\"\nurl = \"{{api}}/login\"\n\
         body = {{ username = \"{USERNAME}\", password = \"${{PASSWORD}}\" }}\n\
         token_path = \"/data/token\"\nexpires_in_path = \"/data/ttl\"\n"
    );
    let job = protected(&lines).api(&auth.url(""));
    let (job, redactor) = env.job_with_env(job, &vars(&[("PASSWORD", PASSWORD)]));

    // Act
    let report = env.run(&job).await;

    // Assert
    assert_eq!(report.status.as_str(), "succeeded", "{:?}", report.error);
    assert_eq!(env.rows("products").await, expected_rows(&auth.records()));
    assert_eq!(auth.token_requests(), 1);
    assert_eq!(redactor.redact(PASSWORD), "[redacted]");
}

#[sqlx::test(migrations = false)]
async fn a_login_answer_without_the_token_names_the_pointer(pool: PgPool) {
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(3), ClientAuth::Basic, Duration::from_secs(60)).await;
    let lines = format!(
        "kind = \"token_request\"\nurl = \"{{api}}/login\"\n\
         body = {{ username = \"{USERNAME}\", password = \"{PASSWORD}\" }}\n"
    );
    let job = protected(&lines).api(&auth.url(""));
    let (job, _) = env.job_with_env(job, &HashMap::new());

    let report = env.run(&job).await;

    let error = report.error.unwrap();
    assert_eq!(report.failure.map(|f| f.as_str()), Some("auth"));
    assert!(
        error.contains("without a token at `/access_token`") && error.contains("data"),
        "{error}"
    );
    assert_eq!(auth.api_requests(), 0);
}

store_tests! {
    async fn rotated_refresh_tokens_are_kept_across_processes(backend: Backend) {
        // Arrange: a server that rotates its refresh token on every use and
        // refuses a used one; the real binary, one process per run, with
        // the log at `trace`.
        let env = TestEnv::start_on(backend, Vec::new()).await;
        let auth =
            FakeAuth::start(products(25), ClientAuth::Basic, Duration::from_secs(60)).await;
        let seed = auth.current_refresh_token();
        let dir = scratch(&format!("auth-rotation-{}", env.store_name));
        let write_config = |seed: &str| {
            let job = protected(&refresh_token(seed)).api(&auth.url(""));
            std::fs::write(dir.join("apisync.toml"), env.config_file(job)).unwrap();
        };
        write_config(&seed);
        let envs = [("CLIENT_SECRET", CLIENT_SECRET), ("RUST_LOG", "trace")];

        // Act: three processes, then a new refresh token in the file.
        let mut outputs = Vec::new();
        for _ in 0..3 {
            outputs.push(apisync(&dir, &["sync", "products"], &envs).await);
        }
        let used_before = auth.refresh_tokens_used();
        auth.set_refresh_token("rt-reauthorized-7");
        write_config("rt-reauthorized-7");
        outputs.push(apisync(&dir, &["sync", "products"], &envs).await);

        // Assert: each run used the token the one before it received, the
        // new one in the file started a new chain, and no token of any
        // kind reached the output.
        for output in &outputs {
            assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
        }
        assert_eq!(used_before.len(), 3);
        assert_eq!(used_before[0], seed);
        let mut distinct = used_before.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "every run used a fresh token: {used_before:?}");
        assert_eq!(auth.refresh_tokens_used()[3], "rt-reauthorized-7");
        assert_eq!(auth.unauthorized(), 0);
        let mut secrets: Vec<String> = auth.issued();
        secrets.extend(auth.refresh_tokens_used());
        secrets.push(auth.current_refresh_token());
        secrets.push(CLIENT_SECRET.to_owned());
        for output in &outputs {
            let text = format!("{}{}", stdout(output), stderr(output));
            assert!(text.contains("TRACE") || text.contains("trace"), "the log is at trace");
            assert!(
                text.contains("Token obtained.") && text.contains("no token yet"),
                "each token request is in the debug log, with its reason: {text}"
            );
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "the output shows {secret}");
            }
        }
    }
}

store_tests! {
    async fn a_refresh_token_lost_in_a_crash_fails_with_invalid_grant_and_says_so(
        backend: Backend
    ) {
        // Arrange: a run keeps its rotated token; then the chain moves on
        // without it (as when a process dies after the server answered and
        // before the store committed).
        let env = TestEnv::start_on(backend, Vec::new()).await;
        let auth =
            FakeAuth::start(products(5), ClientAuth::Basic, Duration::from_secs(60)).await;
        let seed = auth.current_refresh_token();
        let job = protected(&refresh_token(&seed)).api(&auth.url(""));
        let (job, _) = env.job_with_env(job, &secret_env());
        let first = env.run(&job).await;
        assert_eq!(first.status.as_str(), "succeeded", "{:?}", first.error);
        auth.set_refresh_token("rt-never-seen-by-apisync");
        let ctx = new_process(&env);

        // Act
        let report = apisync::sync::run_once(&job, &ctx).await.unwrap();

        // Assert: the stored (rotated) token was used, refused, and the run
        // failed with reason auth, naming invalid_grant.
        assert_eq!(auth.refresh_tokens_used().len(), 2);
        assert_ne!(auth.refresh_tokens_used()[1], seed, "the kept token, not the seed");
        assert_eq!(report.failure.map(|f| f.as_str()), Some("auth"));
        let error = report.error.unwrap();
        assert!(error.contains("invalid_grant"), "{error}");
    }
}

store_tests! {
    async fn a_run_cancelled_while_a_refresh_token_rotates_keeps_the_rotation(
        backend: Backend
    ) {
        // Arrange: the server rotates, then takes half a second to answer;
        // the run is cancelled (a shutdown) in between.
        let env = TestEnv::start_on(backend, Vec::new()).await;
        let auth =
            FakeAuth::start(products(15), ClientAuth::Basic, Duration::from_secs(60)).await;
        auth.token_delay(Duration::from_millis(500));
        let job = protected(&refresh_token(&auth.current_refresh_token())).api(&auth.url(""));
        let (job, _) = env.job_with_env(job, &secret_env());
        let cancel = tokio_util::sync::CancellationToken::new();
        let ctx = apisync::sync::SyncContext {
            client: env.ctx.client.clone(),
            store: env.ctx.store.clone(),
            redactor: env.ctx.redactor.clone(),
            cancel: cancel.clone(),
            in_flight: Default::default(),
        };
        let run = tokio::spawn({
            let job = job.clone();
            async move { apisync::sync::run_once(&job, &ctx).await.unwrap() }
        });
        crate::helpers::wait_until("the token request arrives", async || {
            auth.token_requests() == 1
        })
        .await;
        cancel.cancel();
        let cancelled = run.await.unwrap();
        // What `sync` and the daemon do before they exit.
        env.ctx
            .client
            .finish_token_requests(Duration::from_secs(30))
            .await;
        let ctx = new_process(&env);

        // Act
        let next = apisync::sync::run_once(&job, &ctx).await.unwrap();

        // Assert: the cancelled run is interrupted, and the next process
        // goes on with the token the server rotated meanwhile.
        assert_eq!(cancelled.status.as_str(), "interrupted", "{:?}", cancelled.error);
        assert_eq!(next.status.as_str(), "succeeded", "{:?}", next.error);
        assert_eq!(auth.refresh_tokens_used().len(), 2);
        assert_eq!(env.rows("products").await, expected_rows(&auth.records()));
    }
}

#[sqlx::test(migrations = false)]
async fn an_api_key_in_the_query_goes_once_on_every_request_and_is_redacted(pool: PgPool) {
    // Arrange: one job with the right key against an API whose next links
    // echo it, one with a wrong key against an API that echoes the URL in
    // its 401; the binary's every output, at `trace`.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(35), ClientAuth::Basic, Duration::from_secs(60)).await;
    let dir = scratch("auth-api-key");
    let keyed = |name: &str| {
        JobToml::lines(&format!(
            "records = \"/results\"\n[jobs.request]\nurl = \"{{api}}/keyed\"\n\
             [jobs.pagination]\nkind = \"next_url\"\n[jobs.retry]\nmax_attempts = 1\n\
             [jobs.auth]\nkind = \"api_key\"\nplacement = \"query\"\nname = \"api_key\"\n\
             value = \"${{{name}}}\"\n"
        ))
        .api(&auth.url(""))
    };
    let good = keyed("GOOD_KEY").named("good").with("table", "good");
    let bad = keyed("BAD_KEY").named("bad").with("table", "bad");
    let mut config = env.config_file(good);
    let bad_config = env.config_file(bad);
    config.push_str(&bad_config[bad_config.find("[[jobs]]").unwrap()..]);
    std::fs::write(dir.join("apisync.toml"), &config).unwrap();
    let wrong = "ak-Wrong-9911-secret";
    let envs = [
        ("GOOD_KEY", API_KEY),
        ("BAD_KEY", wrong),
        ("RUST_LOG", "trace"),
    ];

    // Act
    let sync = apisync(&dir, &["sync", "--all"], &envs).await;
    let runs = apisync(&dir, &["runs"], &envs).await;
    let check = apisync(&dir, &["check", "--connect"], &envs).await;
    let errors: Vec<(Option<String>,)> = sqlx::query_as("SELECT error FROM apisync.runs")
        .fetch_all(env.pg())
        .await
        .unwrap();

    // Assert: the good job archived everything, each request carried the
    // key once; no output shows either key.
    let good_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM good")
        .fetch_one(env.pg())
        .await
        .unwrap();
    assert_eq!(good_rows, 35, "{}", stderr(&sync));
    for query in auth.queries() {
        let keys = query.matches("api_key=").count();
        assert_eq!(keys, 1, "{query}");
    }
    let stored: String = errors.into_iter().filter_map(|(e,)| e).collect();
    assert!(stored.contains("401"), "the bad job failed: {stored}");
    for text in [
        stdout(&sync),
        stderr(&sync),
        stdout(&runs),
        stdout(&check),
        stderr(&check),
        stored,
    ] {
        for key in [API_KEY, wrong, "ak-Query", "ak-Wrong"] {
            assert!(!text.contains(key), "shows {key}: {text}");
        }
    }
}

#[sqlx::test(migrations = false)]
async fn secrets_come_from_files_and_an_unreadable_one_is_a_configuration_error(pool: PgPool) {
    // Arrange: the client secret in a file with a trailing newline, as
    // `echo` and editors write it.
    let env = TestEnv::start(pool, Vec::new()).await;
    let auth = FakeAuth::start(products(12), ClientAuth::Basic, Duration::from_secs(60)).await;
    let dir = scratch("auth-file-secret");
    std::fs::write(dir.join("client_secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    let lines = client_credentials().replace("${CLIENT_SECRET}", "${file:client_secret}");
    let job = protected(&lines).api(&auth.url(""));
    std::fs::write(dir.join("apisync.toml"), env.config_file(job.clone())).unwrap();

    // Act
    let sync = apisync(&dir, &["sync", "products"], &[]).await;
    let missing = lines.replace("${file:client_secret}", "${file:/nonexistent/secret}");
    let broken = scratch("auth-file-secret-missing");
    let job = protected(&missing).api(&auth.url(""));
    std::fs::write(broken.join("apisync.toml"), env.config_file(job)).unwrap();
    let check = apisync(&broken, &["check"], &[]).await;

    // Assert
    assert_eq!(sync.status.code(), Some(0), "{}", stderr(&sync));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(env.pg())
        .await
        .unwrap();
    assert_eq!(rows, 12);
    let out = format!("{}{}", stdout(&check), stderr(&check));
    assert_eq!(check.status.code(), Some(2), "{out}");
    assert!(
        out.contains("auth.client_secret")
            && out.contains("cannot read the file /nonexistent/secret"),
        "{out}"
    );
}
