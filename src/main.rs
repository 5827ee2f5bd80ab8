use clap::Parser;
use kcdproxy::config::{Config, Flags};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let flags = Flags::parse();
    match Config::from_flags(&flags) {
        Ok(_) if flags.check_config => println!("configuration OK"),
        Ok(_) => {}
        Err(errs) => {
            for e in &errs {
                eprintln!("config error: {e}");
            }
            std::process::exit(2);
        }
    }
}
