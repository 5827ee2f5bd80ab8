//! `kcdproxy`: flags → validated configuration → logging → runtime. Nothing else.

use clap::Parser;
use kcdproxy::config::{Config, Flags, Listener};
use kcdproxy::runtime::{self, StartErrors};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let flags = Flags::parse();
    let cfg = match Config::from_flags(&flags) {
        Ok(c) => c,
        Err(errs) => {
            let mut errs = StartErrors::from(errs);
            if flags.check_config {
                // The listeners too, so that one pass shows every problem.
                let (listeners, _) = Listener::from_flags(&flags);
                errs.keep(runtime::check_listeners(&listeners));
            }
            fail(errs)
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log_level))
        .with_writer(std::io::stderr)
        .init();
    if flags.check_config {
        // Load certificates and keys and bind the listeners too: a config that parses but
        // cannot start is not OK.
        match runtime::check(cfg) {
            Ok(()) => {
                println!("configuration OK");
                return;
            }
            Err(errs) => fail(errs),
        }
    }
    if let Err(errs) = runtime::run(cfg) {
        fail(errs);
    }
}

fn fail(errs: StartErrors) -> ! {
    for e in &errs {
        eprintln!("kcdproxy: {e}");
    }
    std::process::exit(2);
}
