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
    /// One lock per refresh token chain, by its `job_state` row.
    chains: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Where rotated refresh tokens are kept.
    keeper: Arc<RwLock<Option<Store>>>,
    /// Token requests in flight, each a task of its own (see
    /// [`Tokens::current`]): the process waits for them before it exits.
    requests: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

/// Why a token is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    First,
    Expiring,
    /// The API answered 401 to the token held.
    Refused,
}

impl Renewal {
    fn as_str(self) -> &'static str {
        match self {
            Renewal::First => "no token yet",
            Renewal::Expiring => "the token is about to expire",
            Renewal::Refused => "the API refused the token (401)",
        }
    }
}

/// One auth settings' token.
#[derive(Default)]
struct Slot {
    token: Option<Arc<Token>>,
    /// The refresh token in use (refresh token grant), as last read or
    /// rotated.
    refresh: Option<SecretString>,
    /// `refresh` was rotated but not yet committed to the store.
    unsaved: bool,
}

impl Tokens {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            slots: Arc::default(),
            chains: Arc::default(),
            keeper: Arc::default(),
            requests: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits, at most `within`, for the token requests in flight to end
    /// (and a rotated refresh token among their answers to be committed):
    /// called once the runs are over, before the process exits.
    pub async fn finish(&self, within: Duration) {
        self.requests.close();
        if tokio::time::timeout(within, self.requests.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "A token request was still unanswered at exit; a refresh token it rotates is lost \
                 (see ARCHITECTURE.md)."
            );
        }
        self.requests.reopen();
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
        source: &Arc<TokenSource>,
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
        let slot = slot.lock_owned().await;
        let reason = match &slot.token {
            Some(token) if stale.is_some_and(|stale| Arc::ptr_eq(stale, token)) => Renewal::Refused,
            Some(token) if token.is_fresh() && !slot.unsaved => {
                // Learned again on every use: the redactor keeps the
                // secrets it met last, and this one is still in use.
                redactor.learn(token.value.expose_secret());
                return Ok(Arc::clone(token));
            }
            Some(_) => Renewal::Expiring,
            None => Renewal::First,
        };
        // The request and the commit of a rotated refresh token run as a
        // task of their own, owning the slot: a caller cancelled meanwhile
        // (shutdown, a stage that failed, a prefetch called off) must not
        // drop a rotation the server already made.
        let task = self.requests.spawn({
            let (tokens, source, redactor) = (self.clone(), Arc::clone(source), redactor.clone());
            async move { tokens.obtain(&source, slot, reason, &redactor).await }
        });
        match task.await {
            Ok(result) => result,
            Err(join) => {
                std::panic::resume_unwind(join.try_into_panic().unwrap_or_else(|e| Box::new(e)))
            }
        }
    }

    /// Asks the token endpoint for a new token and keeps it in `slot`,
    /// committing a rotated refresh token before it returns.
    async fn obtain(
        &self,
        source: &TokenSource,
        mut slot: tokio::sync::OwnedMutexGuard<Slot>,
        reason: Renewal,
        redactor: &Redactor,
    ) -> Result<Arc<Token>, TokenError> {
        if slot.unsaved {
            self.save_rotated(source, &mut slot).await?;
            if let Some(token) = slot.token.as_ref().filter(|t| t.is_fresh())
                && reason != Renewal::Refused
            {
                return Ok(Arc::clone(token));
            }
        }
        if reason == Renewal::Refused {
            // Refused by the API: not handed out again, whatever follows.
            slot.token = None;
        }
        // One refresh at a time per chain: jobs whose settings differ only
        // in, say, `scope` hold slots of their own over one chain.
        let _chain = match source.refresh_chain() {
            Some((holder, _)) => Some(self.chain(holder).lock_owned().await),
            None => None,
        };
        let refresh = match source.refresh_chain() {
            Some((holder, seed)) => {
                // Read again before every refresh: another process with the
                // same chain (a `sync` beside the daemon) may have rotated it
                // since. What this process rotated is committed already
                // (above), so the store is never behind.
                let store = self.keeper().ok_or(TokenError::NoStore)?;
                let kept = store
                    .refresh_token(holder)
                    .await
                    .map_err(TokenError::Keep)?;
                if let Some(kept) = &kept {
                    redactor.learn(kept);
                }
                slot.refresh = Some(kept.map_or_else(|| seed.clone(), SecretString::from));
                slot.refresh.clone()
            }
            None => None,
        };
        let issued = source.request(&self.http, refresh.as_ref()).await?;
        redactor.learn(issued.access_token.expose_secret());
        tracing::debug!(
            token_endpoint = %source.display_url(),
            reason = reason.as_str(),
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

    /// The lock of one refresh token chain (a `job_state` row).
    fn chain(&self, holder: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(
            self.chains
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(holder.to_owned())
                .or_default(),
        )
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
