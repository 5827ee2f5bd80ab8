//! The KDC pool's gauges on the metrics endpoint: its size and how much of it is in use.

use super::pool::BlockingPool;
use crate::metrics::{Exposition, Source};

impl Source for BlockingPool {
    fn render(&self, out: &mut Exposition) {
        let st = self.stats();
        out.gauge(
            "kcdproxy_kdc_pool_threads",
            "Threads of the KDC pool.",
            st.threads,
        );
        out.gauge(
            "kcdproxy_kdc_pool_admitted",
            "Calls running or queued in the KDC pool.",
            st.admitted,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact text scrapers have always read.
    #[test]
    fn exposition_is_unchanged() {
        let pool = BlockingPool::new(2, 3).unwrap();
        let mut out = Exposition::new();
        pool.render(&mut out);
        assert_eq!(
            out.as_str(),
            "\
# HELP kcdproxy_kdc_pool_threads Threads of the KDC pool.
# TYPE kcdproxy_kdc_pool_threads gauge
kcdproxy_kdc_pool_threads 2
# HELP kcdproxy_kdc_pool_admitted Calls running or queued in the KDC pool.
# TYPE kcdproxy_kdc_pool_admitted gauge
kcdproxy_kdc_pool_admitted 0
"
        );
    }
}
