//! Auth tokens: each bank issues its own to its own clients and never orders them (the auth
//! state they stand for is ordered; the tokens are not). etcd 3.5's "simple" token: random
//! letters, a dot, a counter; valid for five minutes after its last use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::distributions::{Alphanumeric, DistString};

/// etcd's simple-token TTL, renewed on every use.
const TTL: Duration = Duration::from_secs(300);
/// Tokens held at most: Authenticate costs a bcrypt check and clients' rates are limited, but
/// the table must stay bounded whatever they do; beyond it the least recently used goes.
const MAX_TOKENS: usize = 65_536;

#[derive(Default)]
pub struct Tokens {
    live: Mutex<HashMap<String, (String, Instant)>>,
    counter: AtomicU64,
}

impl Tokens {
    /// A new token for `user`.
    pub fn issue(&self, user: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("{}.{n}", Alphanumeric.sample_string(&mut rand::thread_rng(), 16));
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if live.len() >= MAX_TOKENS {
            live.retain(|_, (_, used)| now.duration_since(*used) < TTL);
        }
        if live.len() >= MAX_TOKENS {
            if let Some(oldest) = live.iter().min_by_key(|(_, (_, used))| *used).map(|(t, _)| t.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(token.clone(), (user.to_string(), now));
        token
    }

    /// The user of a live token, which stays live five more minutes.
    pub fn user(&self, token: &str) -> Option<String> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match live.get_mut(token) {
            Some((user, used)) if now.duration_since(*used) < TTL => {
                *used = now;
                Some(user.clone())
            }
            Some(_) => {
                live.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets every token of `user` (deleted, or its password changed), as etcd does.
    pub fn revoke_user(&self, user: &str) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (u, _)| u != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_user_until_revoked() {
        let t = Tokens::default();
        let a = t.issue("alice");
        let b = t.issue("bob");
        assert_ne!(a, b);
        assert!(a.ends_with(".1") && a.len() == 18, "{a}");
        assert_eq!(t.user(&a).as_deref(), Some("alice"));
        assert_eq!(t.user("forged.9"), None);
        t.revoke_user("alice");
        assert_eq!(t.user(&a), None);
        assert_eq!(t.user(&b).as_deref(), Some("bob"));
    }
}
