//! The delegation engine's counters on the metrics endpoint: the ticket cache, the KDC
//! exchanges it led, and the proxy's own logins.

use super::delegate::Delegator;
use super::stats::DelegationStats;
use crate::metrics::{Exposition, Readiness, Seconds, Source};

impl Source for Delegator {
    fn render(&self, out: &mut Exposition) {
        render_stats(&self.stats(), out);
    }
}

/// `/readyz`: without a valid login of its own the proxy can delegate for nobody.
impl Readiness for Delegator {
    fn ready(&self) -> Result<(), String> {
        if self.proxy_login_valid() {
            Ok(())
        } else {
            Err(format!(
                "delegation: the proxy's Kerberos login {} has expired (renewal failing)",
                self.login_principal()
            ))
        }
    }
}

fn render_stats(st: &DelegationStats, out: &mut Exposition) {
    let counters = [
        (
            "kcdproxy_ticket_cache_hits_total",
            "Tokens built from a cached ticket.",
            st.hits,
        ),
        (
            "kcdproxy_ticket_cache_misses_total",
            "Requests that led a KDC exchange.",
            st.misses,
        ),
        (
            "kcdproxy_ticket_cache_joined_total",
            "Requests that waited for another request's exchange.",
            st.joined,
        ),
        (
            "kcdproxy_ticket_refreshes_total",
            "Background ticket refreshes started.",
            st.refreshes,
        ),
        (
            "kcdproxy_kdc_s4u2self_total",
            "S4U2Self requests sent to the KDC.",
            st.s4u2self,
        ),
        (
            "kcdproxy_kdc_s4u2proxy_total",
            "S4U2Proxy requests sent to the KDC.",
            st.s4u2proxy,
        ),
        (
            "kcdproxy_kdc_refusals_total",
            "Delegation refusals from the KDC.",
            st.refusals,
        ),
        (
            "kcdproxy_ticket_negative_hits_total",
            "Refusals answered from the negative cache.",
            st.negative_hits,
        ),
        (
            "kcdproxy_kdc_errors_total",
            "KDC side unavailable (pool full or timed out, KDC unreachable).",
            st.kdc_errors,
        ),
        (
            "kcdproxy_proxy_logins_total",
            "Logins of the proxy itself (start-up and renewals).",
            st.proxy_logins,
        ),
    ];
    for (name, help, value) in counters {
        out.counter(name, help, value);
    }
    out.gauge(
        "kcdproxy_ticket_cache_entries",
        "(user, SPN) entries cached.",
        st.entries,
    );
    out.summary(
        "kcdproxy_kdc_latency_seconds",
        "KDC exchanges for delegated tickets.",
        Seconds::from_micros(st.kdc_latency_us_sum),
        st.kdc_latency_count,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact text scrapers have always read.
    #[test]
    fn exposition_is_unchanged() {
        let st = DelegationStats {
            hits: 1,
            misses: 2,
            joined: 3,
            refreshes: 4,
            s4u2self: 5,
            s4u2proxy: 6,
            refusals: 7,
            negative_hits: 8,
            kdc_errors: 9,
            proxy_logins: 10,
            entries: 11,
            kdc_latency_us_sum: 1_234_567,
            kdc_latency_count: 12,
        };
        let mut out = Exposition::new();
        render_stats(&st, &mut out);
        assert_eq!(
            out.as_str(),
            "\
# HELP kcdproxy_ticket_cache_hits_total Tokens built from a cached ticket.
# TYPE kcdproxy_ticket_cache_hits_total counter
kcdproxy_ticket_cache_hits_total 1
# HELP kcdproxy_ticket_cache_misses_total Requests that led a KDC exchange.
# TYPE kcdproxy_ticket_cache_misses_total counter
kcdproxy_ticket_cache_misses_total 2
# HELP kcdproxy_ticket_cache_joined_total Requests that waited for another request's exchange.
# TYPE kcdproxy_ticket_cache_joined_total counter
kcdproxy_ticket_cache_joined_total 3
# HELP kcdproxy_ticket_refreshes_total Background ticket refreshes started.
# TYPE kcdproxy_ticket_refreshes_total counter
kcdproxy_ticket_refreshes_total 4
# HELP kcdproxy_kdc_s4u2self_total S4U2Self requests sent to the KDC.
# TYPE kcdproxy_kdc_s4u2self_total counter
kcdproxy_kdc_s4u2self_total 5
# HELP kcdproxy_kdc_s4u2proxy_total S4U2Proxy requests sent to the KDC.
# TYPE kcdproxy_kdc_s4u2proxy_total counter
kcdproxy_kdc_s4u2proxy_total 6
# HELP kcdproxy_kdc_refusals_total Delegation refusals from the KDC.
# TYPE kcdproxy_kdc_refusals_total counter
kcdproxy_kdc_refusals_total 7
# HELP kcdproxy_ticket_negative_hits_total Refusals answered from the negative cache.
# TYPE kcdproxy_ticket_negative_hits_total counter
kcdproxy_ticket_negative_hits_total 8
# HELP kcdproxy_kdc_errors_total KDC side unavailable (pool full or timed out, KDC unreachable).
# TYPE kcdproxy_kdc_errors_total counter
kcdproxy_kdc_errors_total 9
# HELP kcdproxy_proxy_logins_total Logins of the proxy itself (start-up and renewals).
# TYPE kcdproxy_proxy_logins_total counter
kcdproxy_proxy_logins_total 10
# HELP kcdproxy_ticket_cache_entries (user, SPN) entries cached.
# TYPE kcdproxy_ticket_cache_entries gauge
kcdproxy_ticket_cache_entries 11
# HELP kcdproxy_kdc_latency_seconds KDC exchanges for delegated tickets.
# TYPE kcdproxy_kdc_latency_seconds summary
kcdproxy_kdc_latency_seconds_sum 1.234567
kcdproxy_kdc_latency_seconds_count 12
"
        );
    }
}
