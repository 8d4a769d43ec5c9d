//! Rate limiting per the API's table: one GCRA bucket per (category, caller), the caller being
//! the user when authenticated and the client IP otherwise. Built on `governor` (the standard
//! Rust GCRA implementation: lock-free, keyed, with state snapshots for the headers).
//!
//! Keyed by user rather than by session so that opening more sessions never buys more requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use sting_store::UserId;
use warp::http::{HeaderMap, HeaderValue, Method};

use crate::config::{RateLimitsConfig, RateRule};

/// The API's rate-limit categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Auth,
    Chat,
    Search,
    Upload,
    General,
}

impl Category {
    /// The category of a request, or `None` for routes outside the API (e.g. `/metrics`).
    /// The OpenAI-compatible `/v1` routes count like their `/api` counterparts.
    pub fn of(method: &Method, path: &str) -> Option<Category> {
        if let Some(openai) = path.strip_prefix("/v1/") {
            return Some(match openai {
                "chat/completions" => Category::Chat,
                _ => Category::General,
            });
        }
        let api = path.strip_prefix("/api/")?;
        let segments: Vec<&str> = api.split('/').collect();
        Some(match segments.as_slice() {
            // Managing one's passkeys is not a login attempt.
            ["auth", "webauthn", "passkeys", ..] => Category::General,
            ["auth", ..] => Category::Auth,
            ["chat", ..] => Category::Chat,
            ["knowledge", "search" | "ask"] | ["marketplace", "honey-pots", _, "preview"] => {
                Category::Search
            }
            ["knowledge", "honey-pots", _, "documents"] | ["knowledge", "honey-pots", "import"]
                if method == Method::POST =>
            {
                Category::Upload
            }
            _ => Category::General,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Auth => "auth",
            Category::Chat => "chat",
            Category::Search => "search",
            Category::Upload => "upload",
            Category::General => "general",
        }
    }
}

/// Who is counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    User(UserId),
    Ip(IpAddr),
}

type Limiter = RateLimiter<
    Caller,
    governor::state::keyed::DefaultKeyedStateStore<Caller>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// The verdict for one request, with what the response headers should say.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix time (s) at which `remaining` is back to `limit`.
    pub reset_at: u64,
    /// Seconds until the next request is allowed (when refused).
    pub retry_after: u64,
}

impl Decision {
    /// Sets `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_at));
    }
}

pub struct RateLimits {
    limiters: Option<HashMap<Category, (Limiter, RateRule)>>,
}

impl RateLimits {
    pub fn new(config: &RateLimitsConfig) -> RateLimits {
        if !config.enabled {
            return RateLimits { limiters: None };
        }
        let rules = [
            (Category::Auth, config.auth),
            (Category::Chat, config.chat),
            (Category::Search, config.search),
            (Category::Upload, config.upload),
            (Category::General, config.general),
        ];
        let limiters = rules
            .into_iter()
            .map(|(category, rule)| {
                let limiter =
                    RateLimiter::keyed(quota(rule)).with_middleware::<StateInformationMiddleware>();
                (category, (limiter, rule))
            })
            .collect();
        RateLimits {
            limiters: Some(limiters),
        }
    }

    /// Counts one request; `None` when rate limiting is disabled.
    pub fn check(&self, category: Category, caller: &Caller) -> Option<Decision> {
        let (limiter, rule) = self.limiters.as_ref()?.get(&category)?;
        let limit = rule.requests;
        let per_request = replenish_interval(*rule);
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Some(match limiter.check_key(caller) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let until_full = per_request * (limit - remaining);
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_at: ceil_secs(now_unix + until_full),
                    retry_after: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_at: ceil_secs(now_unix + wait + per_request * (limit - 1)),
                    retry_after: ceil_secs(wait).max(1),
                }
            }
        })
    }

    /// Forgets callers whose buckets are full again, so memory follows active callers only.
    pub fn forget_idle(&self) {
        for (limiter, _) in self.limiters.iter().flat_map(HashMap::values) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

fn replenish_interval(rule: RateRule) -> Duration {
    Duration::from_secs(rule.window_secs) / rule.requests
}

fn quota(rule: RateRule) -> Quota {
    let burst = NonZeroU32::new(rule.requests).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(replenish_interval(rule).max(Duration::from_nanos(1)))
        .expect("a positive period")
        .allow_burst(burst)
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(requests: u32) -> RateLimitsConfig {
        let rule = RateRule {
            requests,
            window_secs: 60,
        };
        RateLimitsConfig {
            enabled: true,
            auth: rule,
            chat: rule,
            search: rule,
            upload: rule,
            general: rule,
        }
    }

    #[test]
    fn categories_follow_the_api_table() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(Category::of(&post, "/api/auth/login"), Some(Category::Auth));
        assert_eq!(
            Category::of(&post, "/api/chat/message"),
            Some(Category::Chat)
        );
        assert_eq!(
            Category::of(&post, "/api/knowledge/search"),
            Some(Category::Search)
        );
        assert_eq!(
            Category::of(&post, "/api/knowledge/ask"),
            Some(Category::Search)
        );
        assert_eq!(
            Category::of(&post, "/api/knowledge/honey-pots/x/documents"),
            Some(Category::Upload)
        );
        assert_eq!(
            Category::of(&get, "/api/knowledge/honey-pots/x/documents"),
            Some(Category::General)
        );
        assert_eq!(
            Category::of(&post, "/api/knowledge/honey-pots/import"),
            Some(Category::Upload)
        );
        assert_eq!(
            Category::of(&get, "/api/knowledge/honey-pots/x/export"),
            Some(Category::General)
        );
        assert_eq!(
            Category::of(&get, "/api/system/health"),
            Some(Category::General)
        );
        assert_eq!(Category::of(&get, "/metrics"), None);
        assert_eq!(
            Category::of(&post, "/v1/chat/completions"),
            Some(Category::Chat)
        );
        assert_eq!(Category::of(&get, "/v1/models"), Some(Category::General));
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limits = RateLimits::new(&config(5));
        let caller = Caller::Ip("127.0.0.1".parse().unwrap());
        for expected_remaining in (0..5).rev() {
            let decision = limits.check(Category::Auth, &caller).unwrap();
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
        }
        let refused = limits.check(Category::Auth, &caller).unwrap();
        assert!(!refused.allowed);
        assert_eq!((refused.limit, refused.remaining), (5, 0));
        assert!((1..=12).contains(&refused.retry_after), "{refused:?}");

        // Other callers and other categories keep their own buckets.
        let other = Caller::Ip("127.0.0.2".parse().unwrap());
        assert!(limits.check(Category::Auth, &other).unwrap().allowed);
        assert!(limits.check(Category::Chat, &caller).unwrap().allowed);
    }

    #[test]
    fn disabled_limits_decide_nothing() {
        let mut cfg = config(1);
        cfg.enabled = false;
        let limits = RateLimits::new(&cfg);
        assert!(limits
            .check(Category::Auth, &Caller::Ip("::1".parse().unwrap()))
            .is_none());
    }
}
