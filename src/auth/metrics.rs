//! Authentication on the metrics endpoint: where each scheme's counter is, and the shared
//! services' own gauge (the Basic login cache).

use super::identity::AuthScheme;
use super::services::AuthServices;
use crate::metrics::{Exposition, SchemeSlot, Source};

impl SchemeSlot for AuthScheme {
    fn slot(self) -> usize {
        match self {
            AuthScheme::Ntlm => 0,
            AuthScheme::NegotiateNtlm => 1,
            AuthScheme::NegotiateKerberos => 2,
            AuthScheme::Basic => 3,
        }
    }
}

impl Source for AuthServices {
    fn render(&self, out: &mut Exposition) {
        out.gauge(
            "kcdproxy_basic_cache_entries",
            "Basic logins remembered.",
            self.basic_cache().len(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::SCHEMES;

    /// A scheme's counter is labelled with the name the access log gives it.
    #[test]
    fn slots_match_scheme_names() {
        for s in [
            AuthScheme::Ntlm,
            AuthScheme::NegotiateNtlm,
            AuthScheme::NegotiateKerberos,
            AuthScheme::Basic,
        ] {
            assert_eq!(SCHEMES[s.slot()], s.as_str());
        }
    }

    /// The exact text scrapers have always read.
    #[test]
    fn exposition_is_unchanged() {
        let mut out = Exposition::new();
        AuthServices::none().render(&mut out);
        assert_eq!(
            out.as_str(),
            "\
# HELP kcdproxy_basic_cache_entries Basic logins remembered.
# TYPE kcdproxy_basic_cache_entries gauge
kcdproxy_basic_cache_entries 0
"
        );
    }
}
