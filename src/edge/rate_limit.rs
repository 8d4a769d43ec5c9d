//! Rate limiting per the API's table: one GCRA bucket per (category, caller). Built on
//! `governor` (the standard Rust GCRA implementation: lock-free, keyed, with state snapshots
//! for the headers).
//!
//! What a request is decides its bucket, from the route it matches ([`Category::of`] reads the
//! path's segments, so `/api/knowledge/search/` or `//api//knowledge/search` count as search).
//! Credential attempts (login, registration, passkey ceremonies) are counted per client
//! address, and login also per target account, never per session: a session of one's own must
//! not buy fresh guesses at someone else's password. Everything else is counted per user when
//! authenticated (not per session, so that opening more sessions never buys more requests) and
//! per client address otherwise. An IPv6 client is one /64 (what one subscriber gets), and
//! behind a reverse proxy listed in `server.trusted_proxies` the client is the address that
//! proxy put in `X-Forwarded-For`. Health probes and metrics scrapes are never limited.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
    /// Credential attempts (`rate_limits.auth`), per client address.
    Auth,
    /// Login attempts at one account from anywhere (`rate_limits.auth_account`).
    AuthAccount,
    Chat,
    Search,
    Upload,
    General,
}

impl Category {
    /// The category of a request, or `None` for what is never limited: health probes,
    /// metrics scrapes and routes outside the API (the web app). The OpenAI-compatible `/v1`
    /// routes count like their `/api` counterparts. Empty segments are ignored, as routing
    /// ignores them, so that no spelling of a path moves it to another bucket.
    pub fn of(method: &Method, path: &str) -> Option<Category> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let post = method == Method::POST;
        Some(match segments.as_slice() {
            ["v1", "chat", "completions"] => Category::Chat,
            ["v1", ..] => Category::General,
            ["api", "system", "health" | "metrics"] => return None,
            ["api", "auth", "login" | "register" | "password"]
            | ["api", "auth", "webauthn", "register" | "login", _]
                if post =>
            {
                Category::Auth
            }
            // Session checks, logout and managing one's passkeys are not credential attempts.
            ["api", "auth", ..] => Category::General,
            ["api", "chat", ..] => Category::Chat,
            ["api", "knowledge", "search" | "ask"]
            | ["api", "marketplace", "honey-pots", _, "preview"] => Category::Search,
            ["api", "knowledge", "honey-pots", _, "documents"]
            | ["api", "knowledge", "honey-pots", "import"]
                if post =>
            {
                Category::Upload
            }
            ["api", ..] => Category::General,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Auth => "auth",
            Category::AuthAccount => "auth_account",
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
    /// A client address, as [`Caller::address`] makes it.
    Ip(IpAddr),
    /// The account a login names (its email, lowercased).
    Account(String),
}

impl Caller {
    /// The client at `ip`: an IPv4 address (also when mapped into IPv6), or an IPv6 /64.
    pub fn address(ip: IpAddr) -> Caller {
        Caller::Ip(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
            },
            v4 => v4,
        })
    }

    /// Who a request of `category` is counted as.
    pub fn of(category: Category, user: Option<UserId>, client: IpAddr) -> Caller {
        match (category, user) {
            (Category::Auth, _) | (_, None) => Caller::address(client),
            (_, Some(user)) => Caller::User(user),
        }
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses addresses (`10.0.0.5`) and networks (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an IP address or network"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the last
    /// address in `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends the
    /// address it heard from, so the entries left of the first untrusted one are the client's
    /// to forge).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => continue,
                Ok(ip) => return ip,
                // A hop that is not an address: what lies left of it cannot be trusted.
                Err(_) => break,
            }
        }
        peer
    }
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
            (Category::AuthAccount, config.auth_account),
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
            auth_account: rule,
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
        let table = [
            (&post, "/api/auth/login", Some(Category::Auth)),
            (&post, "/api/auth/register", Some(Category::Auth)),
            (&post, "/api/auth/webauthn/login/init", Some(Category::Auth)),
            (
                &post,
                "/api/auth/webauthn/register/complete",
                Some(Category::Auth),
            ),
            (&get, "/api/auth/session", Some(Category::General)),
            (&post, "/api/auth/logout", Some(Category::General)),
            (&get, "/api/auth/webauthn/passkeys", Some(Category::General)),
            (&post, "/api/chat/message", Some(Category::Chat)),
            (&post, "/api/knowledge/search", Some(Category::Search)),
            (&post, "/api/knowledge/ask", Some(Category::Search)),
            (
                &post,
                "/api/knowledge/honey-pots/x/documents",
                Some(Category::Upload),
            ),
            (
                &get,
                "/api/knowledge/honey-pots/x/documents",
                Some(Category::General),
            ),
            (
                &post,
                "/api/knowledge/honey-pots/import",
                Some(Category::Upload),
            ),
            (
                &get,
                "/api/knowledge/honey-pots/x/export",
                Some(Category::General),
            ),
            (&get, "/api/system/health", None),
            (&get, "/api/system/metrics", None),
            (&get, "/metrics", None),
            (&get, "/", None),
            (&post, "/v1/chat/completions", Some(Category::Chat)),
            (&get, "/v1/models", Some(Category::General)),
            (&get, "/api/system/status", Some(Category::General)),
        ];
        for (method, path, category) in table {
            assert_eq!(Category::of(method, path), category, "{method} {path}");
        }
    }

    #[test]
    fn other_spellings_of_a_path_keep_its_category() {
        let post = Method::POST;
        for (path, category) in [
            ("/api/knowledge/search/", Category::Search),
            ("//api//knowledge/search", Category::Search),
            ("/v1/chat/completions/", Category::Chat),
            ("/api/knowledge/honey-pots/x/documents/", Category::Upload),
            ("/api/auth/login/", Category::Auth),
        ] {
            assert_eq!(Category::of(&post, path), Some(category), "{path}");
        }
        assert_eq!(Category::of(&Method::GET, "/api/system/health/"), None);
    }

    #[test]
    fn credential_attempts_count_per_address_whoever_is_signed_in() {
        let user = uuid::Uuid::new_v4();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(Caller::of(Category::Auth, Some(user), ip), Caller::Ip(ip));
        assert_eq!(
            Caller::of(Category::Chat, Some(user), ip),
            Caller::User(user)
        );
        assert_eq!(Caller::of(Category::Chat, None, ip), Caller::Ip(ip));
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a = Caller::address("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Caller::address("2001:db8:1:2:bbbb::9".parse().unwrap());
        let other = Caller::address("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a, Caller::Ip("2001:db8:1:2::".parse().unwrap()));
        assert_eq!(
            Caller::address("::ffff:192.0.2.1".parse().unwrap()),
            Caller::Ip("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let proxies =
            TrustedProxies::parse(&["10.0.0.0/8".to_owned(), "192.0.2.1".to_owned()]).unwrap();
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
            headers
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // From a trusted proxy: the rightmost untrusted hop; what the client prepended is not
        // believed.
        assert_eq!(
            proxies.client_ip(ip("10.1.1.1"), &headers("6.6.6.6, 198.51.100.4, 10.2.2.2")),
            ip("198.51.100.4")
        );
        assert_eq!(
            proxies.client_ip(ip("192.0.2.1"), &headers("198.51.100.4")),
            ip("198.51.100.4")
        );
        // From anyone else, the header is ignored.
        assert_eq!(
            proxies.client_ip(ip("198.51.100.9"), &headers("6.6.6.6")),
            ip("198.51.100.9")
        );
        // A trusted proxy without (usable) forwarding is the client.
        assert_eq!(
            proxies.client_ip(ip("10.1.1.1"), &HeaderMap::new()),
            ip("10.1.1.1")
        );
        assert_eq!(
            proxies.client_ip(ip("10.1.1.1"), &headers("junk")),
            ip("10.1.1.1")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".to_owned()]).is_err());
        assert!(TrustedProxies::parse(&["proxy".to_owned()]).is_err());
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
