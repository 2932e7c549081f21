//! Credentials on a job's requests (`[jobs.auth]`).
//!
//! Static credentials become a header or a query parameter. Token sources
//! (OAuth2 client credentials, OAuth2 refresh token, a login call) are asked
//! for a token before the first request; the token is shared through
//! [`Tokens`] by every job with the same auth settings, renewed before it
//! expires, and renewed once more after a 401 (see `source::http`).
//!
//! Nothing secret leaves this module except on the request itself: a token
//! is handed to the redactor the moment it arrives, and errors name the
//! token endpoint (without query values) and its error code, never a value.

mod endpoint;
mod tokens;

use std::sync::Arc;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{AuthSettings, KeyPlacement};
pub use endpoint::TokenError;
use endpoint::TokenSource;
pub use tokens::{Token, Tokens};

/// How one job's requests are authenticated.
#[derive(Debug, Clone)]
pub enum Authorizer {
    /// A fixed header: `bearer`, `basic`, `api_key` in a header.
    Header(HeaderName, HeaderValue),
    /// `api_key` in the query of every request.
    Query { name: String, value: SecretString },
    /// A token asked for at a token endpoint, sent as `Bearer`.
    Token(Arc<TokenSource>),
}

/// What a request carries: its URL (with an `api_key` in the query) and
/// its `Authorization` or key header.
pub struct Authorized {
    pub url: Url,
    pub header: Option<(HeaderName, HeaderValue)>,
    /// The token used, to renew exactly it after a 401.
    pub token: Option<Arc<Token>>,
}

impl Authorizer {
    /// # Errors
    /// A value that cannot go into a header, or a token URL that is not a
    /// URL; `apisync check` reports these first.
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        let sensitive = |value: String, what: &str| {
            let mut value = HeaderValue::try_from(value)
                .map_err(|_| format!("auth.{what} cannot be sent in a header"))?;
            value.set_sensitive(true);
            Ok::<_, String>(value)
        };
        Ok(match settings {
            AuthSettings::Bearer { token } => Authorizer::Header(
                AUTHORIZATION,
                sensitive(format!("Bearer {}", token.expose_secret()), "token")?,
            ),
            AuthSettings::Basic { username, password } => {
                let pair = format!("{username}:{}", password.expose_secret());
                Authorizer::Header(
                    AUTHORIZATION,
                    sensitive(
                        format!("Basic {}", crate::redact::base64(pair.as_bytes())),
                        "password",
                    )?,
                )
            }
            AuthSettings::ApiKey {
                name,
                value,
                placement: KeyPlacement::Header,
            } => Authorizer::Header(
                HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("auth.name `{name}` is not a valid header name"))?,
                sensitive(value.expose_secret().to_owned(), "value")?,
            ),
            AuthSettings::ApiKey {
                name,
                value,
                placement: KeyPlacement::Query,
            } => Authorizer::Query {
                name: name.clone(),
                value: value.clone(),
            },
            other => Authorizer::Token(Arc::new(TokenSource::new(other)?)),
        })
    }

    /// Whether a 401 may be cured by a new token.
    pub fn renews(&self) -> bool {
        matches!(self, Authorizer::Token(_))
    }

    /// The credentials for a request to `url`; a token is fetched first
    /// when there is none yet or it is about to expire.
    ///
    /// # Errors
    /// The token endpoint refused or could not be reached.
    pub async fn authorize(
        &self,
        tokens: &Tokens,
        url: &Url,
        redactor: &crate::redact::Redactor,
    ) -> Result<Authorized, TokenError> {
        match self {
            Authorizer::Header(name, value) => Ok(Authorized {
                url: url.clone(),
                header: Some((name.clone(), value.clone())),
                token: None,
            }),
            Authorizer::Query { name, value } => Ok(Authorized {
                url: with_key(url, name, value.expose_secret()),
                header: None,
                token: None,
            }),
            Authorizer::Token(source) => {
                let token = tokens.current(source, None, redactor).await?;
                Ok(Authorized {
                    url: url.clone(),
                    header: Some((AUTHORIZATION, token.header())),
                    token: Some(token),
                })
            }
        }
    }

    /// The credentials for a request to `url` after the API refused
    /// `stale` with a 401: a new token (unless another request renewed it
    /// meanwhile).
    ///
    /// # Errors
    /// The token endpoint refused or could not be reached.
    pub async fn renew(
        &self,
        tokens: &Tokens,
        url: &Url,
        stale: &Arc<Token>,
        redactor: &crate::redact::Redactor,
    ) -> Result<Authorized, TokenError> {
        let Authorizer::Token(source) = self else {
            return self.authorize(tokens, url, redactor).await;
        };
        let token = tokens.current(source, Some(stale), redactor).await?;
        Ok(Authorized {
            url: url.clone(),
            header: Some((AUTHORIZATION, token.header())),
            token: Some(token),
        })
    }
}

/// `url` with the query parameter `name` set to `value`: a parameter of that
/// name (a next link that echoes the key) is replaced, never doubled, and
/// every other pair is left byte for byte as the URL had it (a signed next
/// link stays valid).
fn with_key(url: &Url, name: &str, value: &str) -> Url {
    let mut url = url.clone();
    let query = url.query().unwrap_or_default().to_owned();
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_none_or(|(pair_name, _)| pair_name != name)
        })
        .collect();
    let key = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .finish();
    pairs.push(&key);
    url.set_query(Some(&pairs.join("&")));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_replaces_its_own_parameter_and_leaves_the_rest_as_it_was() {
        let url =
            Url::parse("https://api.test/items?b=1&flag&sig=a%2Cb&api_key=old&c=x:y").unwrap();
        assert_eq!(
            with_key(&url, "api_key", "k y").as_str(),
            "https://api.test/items?b=1&flag&sig=a%2Cb&c=x:y&api_key=k+y"
        );
        let bare = Url::parse("https://api.test/items").unwrap();
        assert_eq!(
            with_key(&bare, "api_key", "k").as_str(),
            "https://api.test/items?api_key=k"
        );
    }
}
