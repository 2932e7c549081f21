//! The tokens of the process: one per auth settings, shared by every job
//! with those settings, fetched once however many jobs need it at once,
//! renewed before it expires.
//!
//! A token is renewed when less than a fifth of its lifetime, and at most
//! 60 s, remains: a 3600 s token is renewed a minute early, a 5 s one at
//! 4 s, so short lifetimes work too. A token without a stated lifetime is
//! kept until the API answers 401.
//!
//! Only a rotated refresh token outlives the process: it is committed to
//! the store (`job_state` row `auth:<fingerprint>`) before its access token
//! is used, so a restart continues the chain. See ARCHITECTURE.md for what
//! a crash between the token endpoint's answer and that commit costs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::TokenError;
use super::endpoint::TokenSource;
use crate::redact::Redactor;
use crate::store::Store;

/// The most a token is renewed ahead of its expiry.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// An access token and when to renew it.
pub struct Token {
    value: SecretString,
    renew_at: Option<Instant>,
}

impl Token {
    fn new(value: SecretString, lifetime: Option<Duration>) -> Self {
        let renew_at = lifetime.map(|lifetime| {
            let margin = (lifetime / 5).min(MAX_MARGIN);
            Instant::now() + (lifetime - margin)
        });
        Self { value, renew_at }
    }

    fn is_fresh(&self) -> bool {
        self.renew_at.is_none_or(|at| Instant::now() < at)
    }

    /// `Authorization: Bearer <token>`, marked sensitive.
    pub fn header(&self) -> HeaderValue {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.value.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token"));
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// The process's tokens (clones share them).
#[derive(Clone)]
pub struct Tokens {
    http: reqwest::Client,
    slots: Arc<Mutex<HashMap<u128, Arc<tokio::sync::Mutex<Slot>>>>>,
    /// Where rotated refresh tokens are kept.
    keeper: Arc<RwLock<Option<Store>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

/// One auth settings' token.
#[derive(Default)]
struct Slot {
    token: Option<Arc<Token>>,
    /// The refresh token in use (refresh token grant), once read.
    refresh: Option<SecretString>,
    /// `refresh` was rotated but not yet committed to the store.
    unsaved: bool,
}

impl Tokens {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            slots: Arc::default(),
            keeper: Arc::default(),
        }
    }

    /// Keeps rotated refresh tokens in `store` from now on.
    pub fn keep_in(&self, store: Store) {
        *self.keeper.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
    }

    fn keeper(&self) -> Option<Store> {
        self.keeper
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The token of `source`: the one held while it is fresh and is not
    /// `stale` (refused by the API), else a new one. Callers that need one
    /// at the same time wait for a single request to the token endpoint.
    pub(super) async fn current(
        &self,
        source: &TokenSource,
        stale: Option<&Arc<Token>>,
        redactor: &Redactor,
    ) -> Result<Arc<Token>, TokenError> {
        let slot = Arc::clone(
            self.slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(source.fingerprint)
                .or_default(),
        );
        let mut slot = slot.lock().await;
        if slot.unsaved {
            self.save_rotated(source, &mut slot).await?;
        }
        let reason = match &slot.token {
            Some(token) if stale.is_some_and(|stale| Arc::ptr_eq(stale, token)) => {
                "the API refused the token (401)"
            }
            Some(token) if token.is_fresh() => return Ok(Arc::clone(token)),
            Some(_) => "the token is about to expire",
            None => "no token yet",
        };

        let refresh = match source.refresh_chain() {
            Some((holder, seed)) => {
                let store = self.keeper().ok_or(TokenError::NoStore)?;
                if slot.refresh.is_none() {
                    let kept = store
                        .refresh_token(holder)
                        .await
                        .map_err(TokenError::Keep)?;
                    if let Some(kept) = &kept {
                        redactor.learn(kept);
                    }
                    slot.refresh = Some(kept.map_or_else(|| seed.clone(), SecretString::from));
                }
                slot.refresh.clone()
            }
            None => None,
        };
        let issued = source.request(&self.http, refresh.as_ref()).await?;
        redactor.learn(issued.access_token.expose_secret());
        tracing::debug!(
            token_endpoint = %source.display_url(),
            reason,
            expires_in_s = issued.expires_in.map(|d| d.as_secs_f64()),
            "Token obtained."
        );
        let token = Arc::new(Token::new(issued.access_token, issued.expires_in));
        slot.token = Some(Arc::clone(&token));
        if let Some(rotated) = issued.refresh_token {
            redactor.learn(rotated.expose_secret());
            let changed = refresh
                .as_ref()
                .is_some_and(|old| old.expose_secret() != rotated.expose_secret());
            if changed {
                slot.refresh = Some(rotated);
                slot.unsaved = true;
                self.save_rotated(source, &mut slot).await?;
            }
        }
        Ok(token)
    }

    /// Commits the slot's rotated refresh token.
    async fn save_rotated(&self, source: &TokenSource, slot: &mut Slot) -> Result<(), TokenError> {
        let (Some((holder, _)), Some(refresh)) = (source.refresh_chain(), &slot.refresh) else {
            slot.unsaved = false;
            return Ok(());
        };
        let store = self.keeper().ok_or(TokenError::NoStore)?;
        store
            .save_refresh_token(holder, refresh.expose_secret())
            .await
            .map_err(TokenError::Keep)?;
        slot.unsaved = false;
        tracing::debug!("The rotated refresh token is kept in the store.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_token_is_renewed_a_fifth_of_its_lifetime_early_at_most_a_minute() {
        let short = Token::new(SecretString::from("a"), Some(Duration::from_secs(5)));
        let long = Token::new(SecretString::from("b"), Some(Duration::from_secs(3600)));
        let forever = Token::new(SecretString::from("c"), None);
        tokio::time::advance(Duration::from_millis(3990)).await;
        assert!(short.is_fresh());
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!short.is_fresh(), "renewed with a fifth (1 s) left");
        tokio::time::advance(Duration::from_secs(3540 - 4)).await;
        assert!(!long.is_fresh(), "renewed a minute early");
        assert!(forever.is_fresh());
        assert_eq!(format!("{short:?}"), "Token([redacted])");
    }
}
