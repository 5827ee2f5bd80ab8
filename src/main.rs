//! `kcdproxy`: flags → validated configuration → logging → runtime. Nothing else.

use clap::Parser;
use kcdproxy::config::{Config, Flags};
use kcdproxy::runtime::{self, StartErrors};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let flags = Flags::parse();
    let cfg = match Config::from_flags(&flags) {
        Ok(c) => c,
        Err(errs) => fail(errs.into()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log_level))
        .with_writer(std::io::stderr)
        .init();
    if flags.check_config {
        // Load certificates and keys too: a config that parses but cannot start is not OK.
        match runtime::prepare(cfg) {
            Ok(_) => {
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
