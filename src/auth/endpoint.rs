//! One request to a token endpoint, and what its answer means.
//!
//! OAuth2 (RFC 6749): a form `POST` with `grant_type`, the client id and
//! secret as HTTP Basic (§2.3.1, the default) or in the form; the answer is
//! `{"access_token", "expires_in", "refresh_token"?}` or, on refusal,
//! `{"error", "error_description"}` (§5.2). A login call (`token_request`)
//! sends what it is configured to send and reads the token at a pointer.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::{AuthSettings, ClientAuth, LoginBody, Method, form_encode};

/// A token endpoint's answer is small; a larger one is not a token.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// How long one token request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Longest text kept from a token endpoint's error description.
const DESCRIPTION_CHARS: usize = 200;

/// Where a job's tokens come from.
#[derive(Debug)]
pub struct TokenSource {
    /// Tokens are shared by the sources with the same fingerprint: the
    /// whole auth settings, secrets included.
    pub(super) fingerprint: u128,
    url: Url,
    method: Method,
    grant: Grant,
}

#[derive(Debug)]
enum Grant {
    ClientCredentials(Client),
    RefreshToken {
        client: Client,
        /// The configured refresh token: the first one used.
        seed: SecretString,
        /// The `job_state` row its rotations are kept in.
        holder: String,
    },
    Login {
        body: Option<LoginBody>,
        form: Option<BTreeMap<String, SecretString>>,
        headers: Vec<(HeaderName, HeaderValue)>,
        token_path: String,
        expires_in_path: String,
    },
}

#[derive(Debug)]
struct Client {
    id: String,
    secret: Option<SecretString>,
    scope: Option<String>,
    params: BTreeMap<String, SecretString>,
    auth: ClientAuth,
}

/// A token endpoint's answer.
pub(super) struct Issued {
    pub access_token: SecretString,
    pub expires_in: Option<Duration>,
    /// A new refresh token: the old one may no longer work.
    pub refresh_token: Option<SecretString>,
}

/// Why no token was obtained. No variant holds a secret; the URL is shown
/// without userinfo and query values.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the token endpoint {url} refused the request (HTTP {status}{}); check the \
         credentials in [jobs.auth]",
        describe_refusal(code.as_deref(), description.as_deref())
    )]
    Refused {
        url: String,
        status: u16,
        /// OAuth2's `error` (`invalid_client`, `invalid_grant` …).
        code: Option<String>,
        description: Option<String>,
    },
    #[error("the token endpoint {url} could not be reached")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the token endpoint {url} answered HTTP {status}")]
    Unavailable { url: String, status: u16 },
    #[error(
        "the token endpoint {url} answered without a token at `{pointer}`; the answer has {present}"
    )]
    NoToken {
        url: String,
        pointer: String,
        present: String,
    },
    #[error("the token endpoint {url} answered with something other than a JSON object")]
    NotJson { url: String },
    #[error("the token endpoint {url} answered with a token that cannot be sent in a header")]
    BadToken { url: String },
    #[error(
        "the refresh token the server rotated could not be kept in the store; it is held in \
         memory and saved before the next token request"
    )]
    Keep(#[source] crate::store::StoreError),
    #[error(
        "auth.kind = \"oauth2_refresh_token\" needs the store to keep a rotated refresh \
         token; none is open here"
    )]
    NoStore,
}

fn describe_refusal(code: Option<&str>, description: Option<&str>) -> String {
    match (code, description) {
        (Some(code), Some(description)) => format!(", {code}: {description}"),
        (Some(code), None) => format!(", {code}"),
        (None, Some(description)) => format!(": {description}"),
        (None, None) => String::new(),
    }
}

impl TokenError {
    /// The store, not the token endpoint, failed.
    pub fn is_store(&self) -> bool {
        matches!(self, TokenError::Keep(_))
    }

    /// A token endpoint that is down or overloaded may answer the next
    /// attempt; one that refuses (any 4xx) will refuse again.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            TokenError::Transport { .. } | TokenError::Unavailable { .. }
        )
    }
}

impl TokenSource {
    /// # Errors
    /// A token URL that is not a URL, or a login header that is not valid.
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        let parse_url = |url: &str, key: &str| {
            Url::parse(url).map_err(|e| format!("auth.{key} is not a valid URL: {e}"))
        };
        let client = |settings: &AuthSettings| {
            settings.oauth_client().map(|c| Client {
                id: c.client_id.to_owned(),
                secret: c.client_secret.cloned(),
                scope: c.scope.map(str::to_owned),
                params: c.params.clone(),
                auth: c.client_auth,
            })
        };
        let (url, method, grant) = match settings {
            AuthSettings::ClientCredentials { token_url, .. } => (
                parse_url(token_url, "token_url")?,
                Method::Post,
                Grant::ClientCredentials(client(settings).expect("an OAuth2 grant")),
            ),
            AuthSettings::RefreshToken {
                token_url,
                client_id,
                refresh_token,
                ..
            } => {
                // The row is named after what identifies the chain of
                // rotations: the server, the client and the first token. A
                // new refresh token in the file starts a new chain.
                let chain = xxhash_rust::xxh3::xxh3_128(
                    format!(
                        "{token_url:?} {client_id:?} {:?}",
                        refresh_token.expose_secret()
                    )
                    .as_bytes(),
                );
                (
                    parse_url(token_url, "token_url")?,
                    Method::Post,
                    Grant::RefreshToken {
                        client: client(settings).expect("an OAuth2 grant"),
                        seed: refresh_token.clone(),
                        holder: format!("auth:{chain:032x}"),
                    },
                )
            }
            AuthSettings::TokenRequest {
                url,
                method,
                body,
                form,
                headers,
                token_path,
                expires_in_path,
            } => {
                let headers = headers
                    .iter()
                    .map(|(name, value)| {
                        let name = HeaderName::try_from(name.as_str()).map_err(|_| {
                            format!("auth.headers: `{name}` is not a valid header name")
                        })?;
                        let mut value =
                            HeaderValue::try_from(value.expose_secret()).map_err(|_| {
                                format!("auth.headers: the value of `{name}` is not valid")
                            })?;
                        value.set_sensitive(true);
                        Ok((name, value))
                    })
                    .collect::<Result<_, String>>()?;
                (
                    parse_url(url, "url")?,
                    *method,
                    Grant::Login {
                        body: body.clone(),
                        form: form.clone(),
                        headers,
                        token_path: token_path.clone(),
                        expires_in_path: expires_in_path.clone(),
                    },
                )
            }
            other => return Err(format!("auth.kind = \"{}\" has no token", other.kind())),
        };
        Ok(Self {
            fingerprint: settings.fingerprint(),
            url,
            method,
            grant,
        })
    }

    /// The `job_state` row a rotated refresh token is kept in, and the
    /// configured one, for the refresh token grant.
    pub(super) fn refresh_chain(&self) -> Option<(&str, &SecretString)> {
        match &self.grant {
            Grant::RefreshToken { holder, seed, .. } => Some((holder, seed)),
            _ => None,
        }
    }

    /// The token endpoint, for messages (no userinfo, no query values).
    pub(super) fn display_url(&self) -> String {
        crate::redact::display_url(self.url.as_str())
    }

    /// Asks the token endpoint for a token; `refresh_token` is the one to
    /// use for the refresh token grant.
    pub(super) async fn request(
        &self,
        http: &reqwest::Client,
        refresh_token: Option<&SecretString>,
    ) -> Result<Issued, TokenError> {
        let url = self.display_url();
        let method = match self.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
        };
        let mut request = http
            .request(method, self.url.clone())
            .header(ACCEPT, "application/json")
            .timeout(TIMEOUT);
        let (token_path, expires_in_path) = match &self.grant {
            Grant::ClientCredentials(client) => {
                let mut form = vec![pair("grant_type", "client_credentials")];
                request = client.sign(request, &mut form);
                request = with_form(request, form.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                ("/access_token", "/expires_in")
            }
            Grant::RefreshToken { client, seed, .. } => {
                let token = refresh_token.unwrap_or(seed);
                let mut form = vec![
                    pair("grant_type", "refresh_token"),
                    pair("refresh_token", token.expose_secret()),
                ];
                request = client.sign(request, &mut form);
                request = with_form(request, form.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                ("/access_token", "/expires_in")
            }
            Grant::Login {
                body,
                form,
                headers,
                token_path,
                expires_in_path,
            } => {
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                if let Some(form) = form {
                    request = with_form(
                        request,
                        form.iter().map(|(k, v)| (k.as_str(), v.expose_secret())),
                    );
                } else if let Some(body) = body {
                    request = request.json(&body.0);
                }
                (token_path.as_str(), expires_in_path.as_str())
            }
        };
        let transport = |source: reqwest::Error| TokenError::Transport {
            url: url.clone(),
            source: source.without_url(),
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                break;
            }
        }
        let answer: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_client_error() {
            let text = |field: &str| {
                answer
                    .as_ref()
                    .and_then(|a| a.get(field))
                    .and_then(Value::as_str)
                    .map(|s| {
                        let mut s: String = s
                            .chars()
                            .map(|c| if c.is_control() { ' ' } else { c })
                            .take(DESCRIPTION_CHARS)
                            .collect();
                        s.truncate(s.trim_end().len());
                        s
                    })
            };
            return Err(TokenError::Refused {
                url,
                status: status.as_u16(),
                code: text("error"),
                description: text("error_description"),
            });
        }
        if !status.is_success() {
            return Err(TokenError::Unavailable {
                url,
                status: status.as_u16(),
            });
        }
        let Some(answer) = answer.filter(Value::is_object) else {
            return Err(TokenError::NotJson { url });
        };
        let token = match answer.pointer(token_path) {
            Some(Value::String(token))
                if HeaderValue::try_from(format!("Bearer {token}")).is_err() =>
            {
                return Err(TokenError::BadToken { url });
            }
            Some(Value::String(token)) if !token.is_empty() => SecretString::from(token.as_str()),
            _ => {
                return Err(TokenError::NoToken {
                    url,
                    pointer: token_path.to_owned(),
                    present: crate::source::paginate::top_level_keys(&answer),
                });
            }
        };
        let expires_in = match answer.pointer(expires_in_path) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        .map(|seconds| Duration::from_secs_f64(seconds.min(365.0 * 86_400.0)));
        let refresh_token = answer
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(SecretString::from);
        Ok(Issued {
            access_token: token,
            expires_in,
            refresh_token,
        })
    }
}

impl Client {
    /// Adds the client's credentials: HTTP Basic of the form-encoded id and
    /// secret (RFC 6749 §2.3.1), or both in the form; a public client (no
    /// secret) sends its id in the form. Adds the scope and extra fields.
    fn sign(
        &self,
        mut request: reqwest::RequestBuilder,
        form: &mut Vec<(String, String)>,
    ) -> reqwest::RequestBuilder {
        match (&self.secret, self.auth) {
            (Some(secret), ClientAuth::Basic) => {
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.id),
                    form_encode(secret.expose_secret())
                );
                let mut value = HeaderValue::try_from(format!(
                    "Basic {}",
                    crate::redact::base64(pair.as_bytes())
                ))
                .expect("base64 is a valid header value");
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            (Some(secret), ClientAuth::Form) => {
                form.push(pair("client_id", &self.id));
                form.push(pair("client_secret", secret.expose_secret()));
            }
            (None, _) => form.push(pair("client_id", &self.id)),
        }
        if let Some(scope) = &self.scope {
            form.push(pair("scope", scope));
        }
        form.extend(
            self.params
                .iter()
                .map(|(name, value)| pair(name, value.expose_secret())),
        );
        request
    }
}

/// An `application/x-www-form-urlencoded` body.
fn with_form<'a>(
    request: reqwest::RequestBuilder,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    request
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
}

fn pair(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}
