//! `[jobs.auth]`: how a job proves who it is to its API. Static credentials
//! (`bearer`, `basic`, `api_key`) and token sources that apisync asks for a
//! short-lived token (`oauth2_client_credentials`, `oauth2_refresh_token`,
//! `token_request`). Every secret is a [`SecretString`]: never in `Debug`
//! output, and handed to the redactor by `config::setting_secrets`.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Method;

/// `[jobs.auth]`, chosen by `kind`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSettings {
    /// `Authorization: Bearer <token>`.
    Bearer {
        #[schemars(with = "String")]
        token: SecretString,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        #[schemars(with = "String")]
        password: SecretString,
    },
    /// A key in a header (`X-Api-Key: …`) or a query parameter (`?api_key=…`,
    /// on every request, URLs the API hands back included).
    ApiKey {
        name: String,
        #[schemars(with = "String")]
        value: SecretString,
        #[serde(default)]
        placement: KeyPlacement,
    },
    /// OAuth2 client credentials grant (RFC 6749 §4.4).
    #[serde(rename = "oauth2_client_credentials")]
    ClientCredentials {
        token_url: String,
        client_id: String,
        #[schemars(with = "String")]
        client_secret: SecretString,
        /// Space-separated scopes, sent as `scope`.
        scope: Option<String>,
        /// Extra form fields (`audience = "…"`).
        #[serde(default)]
        #[schemars(with = "BTreeMap<String, String>")]
        params: BTreeMap<String, SecretString>,
        #[serde(default)]
        client_auth: ClientAuth,
    },
    /// OAuth2 refresh token grant (RFC 6749 §6); a rotated refresh token the
    /// server returns is kept in the store and used from then on.
    #[serde(rename = "oauth2_refresh_token")]
    RefreshToken {
        token_url: String,
        client_id: String,
        /// Optional: public clients have none.
        #[schemars(with = "Option<String>")]
        client_secret: Option<SecretString>,
        /// The first refresh token; replaced in the store when the server
        /// rotates it. A different value here starts over from it.
        #[schemars(with = "String")]
        refresh_token: SecretString,
        scope: Option<String>,
        #[serde(default)]
        #[schemars(with = "BTreeMap<String, String>")]
        params: BTreeMap<String, SecretString>,
        #[serde(default)]
        client_auth: ClientAuth,
    },
    /// A login call that answers with a token.
    TokenRequest {
        url: String,
        #[serde(default = "post")]
        method: Method,
        /// A JSON body (`{ username = "…", password = "${PASSWORD}" }`).
        body: Option<LoginBody>,
        /// A form body instead (`application/x-www-form-urlencoded`).
        #[schemars(with = "Option<BTreeMap<String, String>>")]
        form: Option<BTreeMap<String, SecretString>>,
        #[serde(default)]
        #[schemars(with = "BTreeMap<String, String>")]
        headers: BTreeMap<String, SecretString>,
        /// JSON pointer to the token in the answer.
        #[serde(default = "default_token_path")]
        token_path: String,
        /// JSON pointer to its lifetime in seconds; a token without one is
        /// used until the API answers 401.
        #[serde(default = "default_expires_in_path")]
        expires_in_path: String,
    },
}

/// A login call's JSON body: it holds a password, so `Debug` shows none of it.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct LoginBody(pub serde_json::Value);

impl std::fmt::Debug for LoginBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginBody([redacted])")
    }
}

/// The OAuth2 client of the two grants, borrowed from their settings.
#[derive(Debug, Clone, Copy)]
pub struct OAuthClient<'a> {
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: Option<&'a SecretString>,
    pub scope: Option<&'a str>,
    pub params: &'a BTreeMap<String, SecretString>,
    pub client_auth: ClientAuth,
}

/// How the client id and secret reach the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Form,
}

/// Where an `api_key` goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyPlacement {
    #[default]
    Header,
    Query,
}

fn post() -> Method {
    Method::Post
}

fn default_token_path() -> String {
    "/access_token".to_owned()
}

fn default_expires_in_path() -> String {
    "/expires_in".to_owned()
}

impl AuthSettings {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthSettings::Bearer { .. } => "bearer",
            AuthSettings::Basic { .. } => "basic",
            AuthSettings::ApiKey { .. } => "api_key",
            AuthSettings::ClientCredentials { .. } => "oauth2_client_credentials",
            AuthSettings::RefreshToken { .. } => "oauth2_refresh_token",
            AuthSettings::TokenRequest { .. } => "token_request",
        }
    }

    /// The OAuth2 client of the two OAuth2 grants.
    pub fn oauth_client(&self) -> Option<OAuthClient<'_>> {
        match self {
            AuthSettings::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                params,
                client_auth,
            } => Some(OAuthClient {
                token_url,
                client_id,
                client_secret: Some(client_secret),
                scope: scope.as_deref(),
                params,
                client_auth: *client_auth,
            }),
            AuthSettings::RefreshToken {
                token_url,
                client_id,
                client_secret,
                scope,
                params,
                client_auth,
                ..
            } => Some(OAuthClient {
                token_url,
                client_id,
                client_secret: client_secret.as_ref(),
                scope: scope.as_deref(),
                params,
                client_auth: *client_auth,
            }),
            _ => None,
        }
    }

    /// The secret values, for the redactor: each as written, and where a
    /// request carries it in another form (Basic's base64), that too.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        if let Some(client) = self.oauth_client() {
            client.secrets(&mut secrets);
        }
        match self {
            AuthSettings::Bearer { token } => secrets.push(token.expose_secret().to_owned()),
            AuthSettings::Basic { username, password } => {
                let password = password.expose_secret();
                secrets.push(password.to_owned());
                secrets.push(crate::redact::base64(
                    format!("{username}:{password}").as_bytes(),
                ));
            }
            AuthSettings::ApiKey { value, .. } => secrets.push(value.expose_secret().to_owned()),
            AuthSettings::ClientCredentials { .. } => {}
            AuthSettings::RefreshToken { refresh_token, .. } => {
                secrets.push(refresh_token.expose_secret().to_owned());
            }
            AuthSettings::TokenRequest {
                body,
                form,
                headers,
                ..
            } => {
                // A login body holds a password; which member is not known,
                // so every string in it is treated as one.
                if let Some(body) = body {
                    string_leaves(&body.0, &mut secrets);
                }
                for value in form.iter().flat_map(|form| form.values()) {
                    secrets.push(value.expose_secret().to_owned());
                }
                for value in headers.values() {
                    secrets.push(value.expose_secret().to_owned());
                }
            }
        }
        secrets
    }

    /// A fingerprint of the whole settings, secrets included: tokens are
    /// shared by the jobs whose settings have the same one, and a changed
    /// secret gets a new token.
    pub fn fingerprint(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(self.describe_whole().as_bytes())
    }

    /// Every setting, secrets exposed: only ever hashed.
    fn describe_whole(&self) -> String {
        let secret = |s: &SecretString| s.expose_secret().to_owned();
        let map = |m: &BTreeMap<String, SecretString>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
                .collect::<Vec<_>>()
        };
        let client = self.oauth_client().map(|c| {
            format!(
                "{:?}",
                (
                    c.token_url,
                    c.client_id,
                    c.client_secret.map(secret),
                    c.scope,
                    map(c.params),
                    c.client_auth,
                )
            )
        });
        let own = match self {
            AuthSettings::Bearer { token } => format!("{:?}", secret(token)),
            AuthSettings::Basic { username, password } => {
                format!("{username:?} {:?}", secret(password))
            }
            AuthSettings::ApiKey {
                name,
                value,
                placement,
            } => format!("{name:?} {:?} {placement:?}", secret(value)),
            AuthSettings::ClientCredentials { .. } => String::new(),
            AuthSettings::RefreshToken { refresh_token, .. } => {
                format!("{:?}", secret(refresh_token))
            }
            AuthSettings::TokenRequest {
                url,
                method,
                body,
                form,
                headers,
                token_path,
                expires_in_path,
            } => format!(
                "{url:?} {method:?} {body:?} {:?} {:?} {token_path:?} {expires_in_path:?}",
                form.as_ref().map(map),
                map(headers),
            ),
        };
        format!("{} {own} {client:?}", self.kind())
    }
}

impl OAuthClient<'_> {
    fn secrets(&self, out: &mut Vec<String>) {
        if let Some(secret) = self.client_secret {
            let secret = secret.expose_secret();
            out.push(secret.to_owned());
            out.push(crate::redact::base64(
                format!("{}:{}", form_encode(self.client_id), form_encode(secret)).as_bytes(),
            ));
        }
        for value in self.params.values() {
            out.push(value.expose_secret().to_owned());
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value, as RFC 6749
/// §2.3.1 asks for the client id and secret before they go into HTTP Basic.
pub fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Every string and number in `value` (a PIN is a number).
fn string_leaves(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| string_leaves(v, out)),
        serde_json::Value::Object(members) => members.values().for_each(|v| string_leaves(v, out)),
        _ => {}
    }
}
